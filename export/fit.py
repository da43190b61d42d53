"""Fit heads on image embeddings: a logistic-regression detector and an MLP quality regressor.

Both fit on standardised features and fold the standardisation back into their first
Linear layer, so the saved head takes the raw embedding. Deterministic for a seed.
"""
from __future__ import annotations

from .deps import require
from .heads import DetectorHead, QualityHead

torch = require("torch")


def _standardise(x):
    mu = x.mean(0)
    sigma = x.std(0).clamp_min(1e-6)
    return (x - mu) / sigma, mu, sigma


def _fold(linear, mu, sigma) -> None:
    """Make linear(z) with z = (x - mu) / sigma a function of x."""
    with torch.no_grad():
        w = linear.weight / sigma
        linear.bias -= (w * mu).sum(1)
        linear.weight.copy_(w)


def fit_detector(emb, labels, *, l2: float = 1e-2, steps: int = 200, seed: int = 0,
                 label_names=("real", "generated"), threshold: float = 0.5) -> DetectorHead:
    """L2-regularised logistic regression (LBFGS) on embeddings; labels 1 = label_names[1]."""
    torch.manual_seed(seed)
    x = emb.detach().double()
    y = labels.detach().double()
    z, mu, sigma = _standardise(x)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = DetectorHead(x.shape[1], label_names, threshold)
    with torch.no_grad():
        head.linear.weight.copy_(w.detach().float()[None])
        head.linear.bias.copy_(b.detach().float())
    _fold(head.linear, mu.float(), sigma.float())
    return head.eval()


def fit_quality(emb, scores, *, hidden: int = 64, steps: int = 1500, lr: float = 3e-3, weight_decay: float = 1e-3,
                seed: int = 0, scale: dict | None = None, bounded: bool = False) -> QualityHead:
    """Two-layer ReLU MLP regressing `scores` from embeddings (full-batch Adam, MSE).

    Unbounded heads learn standardised targets (undone in the last layer afterwards);
    bounded heads learn the scores directly through their sigmoid range.
    """
    torch.manual_seed(seed)
    x = emb.detach().float()
    y = scores.detach().float()
    z, mu, sigma = _standardise(x)
    head = QualityHead([x.shape[1], hidden, 1], "relu", scale, bounded=bounded)
    y_mu, y_sigma = (0.0, 1.0) if bounded else (y.mean(), y.std().clamp_min(1e-6))
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(z)[0], (y - y_mu) / y_sigma)
        loss.backward()
        opt.step()
    if not bounded:
        last = head.linears()[-1]
        with torch.no_grad():  # undo the target standardisation in the last layer
            last.weight.mul_(y_sigma)
            last.bias.mul_(y_sigma).add_(y_mu)
    _fold(head.linears()[0], mu, sigma)
    return head.eval()


def fit_quality_ridge(emb, scores, *, hidden: int = 256, ridge: float = 1.0, seed: int = 0,
                      scale: dict | None = None, bounded: bool = False) -> QualityHead:
    """A quality MLP fitted in closed form, so the same inputs give the same head on any CPU.

    The hidden layer is a fixed random ReLU feature map of the standardised embedding (weights
    from numpy's seeded generator, whose integer-based sampling is identical everywhere); the
    output layer is the ridge-regression solution over those features, computed in float64.
    Nothing is iterated, so a rounding difference in the inputs (another CPU's float kernels)
    moves the weights by about that much, instead of being amplified by thousands of optimiser
    steps. A bounded head regresses the logit of the score's position in its scale.
    """
    import numpy as np

    x = emb.detach().double().cpu().numpy()
    y = scores.detach().double().cpu().numpy()
    mu, sigma = x.mean(0), np.maximum(x.std(0, ddof=1), 1e-6)
    z = (x - mu) / sigma
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, x.shape[1])) / np.sqrt(x.shape[1])
    b1 = rng.standard_normal(hidden) * 0.5
    h = np.maximum(z @ w1.T + b1, 0.0)
    head = QualityHead([x.shape[1], hidden, 1], "relu", scale, bounded=bounded)
    if bounded:
        lo, hi = float(head.scale["min"]), float(head.scale["max"])
        t = np.clip((y - lo) / (hi - lo), 0.02, 0.98)
        target = np.log(t / (1 - t))
    else:
        target = y
    t_mu = target.mean()
    h_mu = h.mean(0)
    hc = h - h_mu
    w2 = np.linalg.solve(hc.T @ hc + ridge * len(y) * np.eye(hidden), hc.T @ (target - t_mu))
    b2 = t_mu - h_mu @ w2
    first, last = head.linears()
    with torch.no_grad():  # fold the standardisation into the first layer, in float64, then store
        first.weight.copy_(torch.from_numpy(w1 / sigma))
        first.bias.copy_(torch.from_numpy(b1 - (w1 / sigma) @ mu))
        last.weight.copy_(torch.from_numpy(w2[None]))
        last.bias.copy_(torch.from_numpy(np.array([b2])))
    return head.eval()
