"""``python -m sklearn_otflow``: a small OT-Flow fitted to a dataset that ships with scikit-learn."""

import time

import numpy as np
import torch
from sklearn.datasets import load_iris
from sklearn.preprocessing import StandardScaler

from sklearn_otflow import Potential, log_prob, objective


def main() -> None:
    X = StandardScaler().fit_transform(load_iris().data[:, :2]).astype(np.float32)
    torch.manual_seed(0)
    phi = Potential(2, width=16)
    opt = torch.optim.Adam(phi.parameters(), lr=0.02)
    x = torch.from_numpy(X)
    start = time.perf_counter()
    for it in range(201):
        opt.zero_grad()
        out = objective(phi, x, alpha=10.0, alpha_hjb=1.0, n_steps=8)
        out.loss.backward()
        opt.step()
        if it % 50 == 0:
            print(f"iter {it:3d}  NLL {out.nll.item():.3f}  transport {out.transport.item():.3f}")
    with torch.no_grad():
        ll = log_prob(phi, x, n_steps=16).mean().item()
    print(
        f"iris (2 standardized features): mean log-likelihood {ll:.3f} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
