"""Prototype (issue 10): a closed-form middle level for robust dataset learning on
Fashion-MNIST. Outer: Adam on S (inputs + soft labels). Middle: kernel ridge regression on
the features of random ConvNets (a fresh random network from a pool each step). Inner: PGD
(margin) on a real batch against that regressor. Scored on the VALIDATION split only: fresh
ConvNet / MLP naturally trained on S (DC protocol), PGD-10 and clean accuracy."""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from harness.datasets import load_dataset
from harness.methods import MethodContext
from harness.methods._synthetic_set import init_synthetic_set
from harness.protocol.attacks import Threat, accuracy, margin_loss, pgd, robust_accuracy
from harness.protocol.train import TrainConfig, WorkMeter, train_model

ap = argparse.ArgumentParser()
ap.add_argument("--ipc", type=int, default=10)
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--lam", type=float, default=1e-3)
ap.add_argument("--width", type=int, default=64)
ap.add_argument("--pool", type=int, default=8)
ap.add_argument("--attack-steps", type=int, default=10)
ap.add_argument("--real-batch", type=int, default=256)
ap.add_argument("--eps", type=float, default=0.1)
ap.add_argument("--label-lr", type=float, default=0.01)
ap.add_argument("--eval-archs", default="convnet,mlp")
ap.add_argument("--subset", type=int, default=1000)
ap.add_argument("--n-val", type=int, default=500)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default=None)
ap.add_argument("--eval-width", type=int, default=32)
ap.add_argument("--clean-weight", type=float, default=0.0)
a = ap.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(2)
data = load_dataset("fashion-mnist", subset=a.subset, split_seed=1)
dev = torch.device("cpu")
gen = torch.Generator().manual_seed(a.seed)
ctx = MethodContext(
    data=data,
    threat=Threat("linf", a.eps),
    train=TrainConfig(),
    device=dev,
    generator=gen,
    seed=a.seed,
    archs=["convnet"],
    meter=WorkMeter(),
    arch_settings={"convnet": {"width": a.width}},
)
x0, y0 = init_synthetic_set(data, a.ipc, "real", gen)
xs = x0.clone().requires_grad_(True)
logits = (F.one_hot(y0, 10).float() * 3.0).requires_grad_(True)
opt = torch.optim.Adam([{"params": [xs], "lr": a.lr}, {"params": [logits], "lr": a.label_lr}])
pool = [ctx.build("convnet", seed=1000 + i, metered=False).eval() for i in range(a.pool)]
for net in pool:
    net.requires_grad_(False)


def feats(net, x):
    return net.features(x).flatten(1)


def krr(net, xs, ys):
    fs = feats(net, xs)
    fs = fs / fs.norm(dim=1, keepdim=True).clamp_min(1e-6)
    k = fs @ fs.T
    alpha = torch.linalg.solve(k + a.lam * torch.eye(k.shape[0]), ys)

    def predict(x):
        fx = feats(net, x)
        fx = fx / fx.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return (fx @ fs.T) @ alpha * 10.0  # scaled so a softmax of it is a usable CE target

    return predict


xr_all, yr_all = data.x_train, data.y_train
t0 = time.time()
for step in range(a.steps):
    net = pool[step % a.pool]
    idx = torch.randint(0, xr_all.shape[0], (a.real_batch,), generator=gen)
    xr, yr = xr_all[idx], yr_all[idx]
    ys = F.softmax(logits, 1)
    f_const = krr(net, xs.detach(), ys.detach())
    x_adv = pgd(
        f_const,
        xr,
        yr,
        norm="linf",
        eps=a.eps,
        steps=a.attack_steps,
        bounds=data.bounds,
        generator=gen,
        loss_fn=margin_loss,
    )
    f = krr(net, xs, ys)
    loss = F.cross_entropy(f(x_adv), yr) + a.clean_weight * F.cross_entropy(f(xr), yr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        xs.clamp_(*data.bounds) if data.bounds else None
    if step % 50 == 0 or step == a.steps - 1:
        with torch.no_grad():
            acc = (f(x_adv).argmax(1) == yr).float().mean().item()
        print(
            f"step {step} loss {loss.item():.3f} krr_adv_acc {acc:.3f} t {time.time() - t0:.0f}s",
            flush=True,
        )
learn_s = time.time() - t0
xv, yv = data.x_val[: a.n_val], data.y_val[: a.n_val]
ys = F.softmax(logits, 1).detach()
res = {"args": vars(a), "learn_s": learn_s}
for arch in a.eval_archs.split(","):
    for label, (x, y) in {
        "learned": (xs.detach(), ys),
        "init": (x0, F.one_hot(y0, 10).float()),
    }.items():
        settings = {"width": a.eval_width} if arch == "convnet" else {}
        ectx = MethodContext(
            data=data,
            threat=Threat("linf", a.eps),
            train=TrainConfig(),
            device=dev,
            generator=torch.Generator().manual_seed(7),
            seed=7,
            archs=[arch],
            meter=WorkMeter(),
            arch_settings={arch: settings},
        )
        model = ectx.build(arch, seed=7, metered=False)
        cfg = TrainConfig(
            epochs=300,
            batch_size=min(256, len(x)),
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="halfway",
        )
        t = time.time()
        train_model(model, x, y, cfg, generator=torch.Generator().manual_seed(7), device=dev)
        model.eval()
        attack = Threat("linf", a.eps, steps=10).attack(
            bounds=data.bounds, generator=torch.Generator().manual_seed(0)
        )
        res[f"{arch}.{label}"] = {
            "val_clean": accuracy(model, xv, yv),
            "val_pgd10": robust_accuracy(model, xv, yv, attack),
            "train_s": time.time() - t,
        }
        print(arch, label, res[f"{arch}.{label}"], flush=True)
if a.out:
    json.dump(res, open(a.out, "w"), indent=1)
    torch.save({"x": xs.detach(), "y": ys}, a.out.replace(".json", ".pt"))
