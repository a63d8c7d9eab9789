"""What a sweep will cost before it runs: work and wall time per trial, from a short
calibration of the real code on this machine (`harness validate --estimate`, `harness sweep
--dry-run --estimate`).

For each variant (at its first searched configuration) the calibration runs, on the real data:
- a dataset method's learning for a few steps (it is stopped once `CALIBRATION_STEPS` steps
  after the first have logged their loss), scaled by its planned steps; a method that plans no
  steps (e.g. `random`) learns in full;
- one short epoch of each evaluation architecture's training with the trial's loss step (an
  adversarial method's attack included) on `CALIBRATION_BATCHES` batches, scaled by the
  epochs, batches and models of the trial;
- PGD on a slice of test images, scaled to the test and validation images scored. AutoAttack
  is counted as a range. At most, every image survives every attack: APGD-CE (100 steps) and
  APGD-T (9 targets x 100) for the fast version, plus FAB-T (9 x 100 steps of two forwards
  and a backward: 1.5 passes each) and Square (5,000 queries, forward only: half a pass
  each) for the standard one (Croce & Hein 2020, arXiv 2003.01690). At least, every image
  falls to APGD-CE, which still runs its 100 steps on every image it is given.

Peak memory: the most memory the calibration's steps held above what the process held when
it started (tensors of the learning steps, the training batches and one attack step on a full
attack batch): on CUDA the allocator's peak (`torch.cuda.max_memory_allocated`), on a CPU
the process's resident high-water mark (Linux's VmHWM, reset through /proc/self/clear_refs).
The dataset itself, the CUDA context (~0.5 GB) and the framework's own memory come on top.

Work is in examples through the network (the `WorkMeter` unit: a forward pass with its
backward, attack steps included), also given in work epochs over the full training split as
the leaderboard reports. Wall time is this machine's, one trial at a time, with the threads a
trial gets (`resources.cpu`); per-epoch validation probes are not counted.

Work is also given in FLOPs: each example times the forward FLOPs of the network it went
through, at the spec's settings of that arch (`forward_flops`: convolutions and matrix
products as `torch.utils.flop_counter` counts them, two per multiply-add; normalisation,
activations and pooling left out), times `PASS_FLOPS` for a training or learning pass (the
backward computes gradients for inputs and weights, about twice the forward: the usual
approximation, e.g. Kaplan et al. 2020, arXiv 2001.08361), once for a pass with autograd
off (DM's real batches, robust_features' targets: `WorkMeter.forward_only`), and
`ATTACK_PASS_FLOPS` for an evaluation attack step (its backward stops at the input's
gradient). Training passes inside adversarial training count 3 too (an upper bound), and
the second-order backward of dc and rdl_gm is not counted (a lower bound there).

`count_only` (`--assume-tflops R`): the work is counted without being timed, with every
network built as a stand-in of its arch (`STANDIN`: the smallest width and depth), a
full training run inside a method's learning (robust_features' robust model) cut to its
first batch, the rest charged at that batch's rate, and loops whose items cost alike cut to
their first item (`WorkMeter.alike`: the classes of a dc, dm or rdl_gm step,
robust_features' matching batches), both done by the learning's meter made with
`count_only=True`, so that a GPU spec is counted on
a CPU; the FLOPs stay those of the spec's networks, and time is the work over an assumed
sustained rate R. The count equals the full calibration's (tested for the seven methods that
learn or train adversarially): no learning loop, training budget or attack depends on the
network's size, and every class of the shipped specs costs the same (`ipc` rows each, and
more training examples than the real batch; a class short of it is charged at the first
class's cost).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harness.protocol.train import WorkCount

CALIBRATION_STEPS = 2  # learning steps timed after the first (which pays for setting up)
CALIBRATION_BATCHES = 3  # training batches timed per architecture
ATTACK_SLICE = 32  # test images attacked to time PGD
PASS_FLOPS = 3  # a training pass in forward FLOPs: the forward and a backward of about two
ATTACK_PASS_FLOPS = 2  # an attack step: the forward and a backward to the input only
STANDIN = {"width": 2, "depth": 1, "hidden": 2}  # arch settings a count-only network gets
# AutoAttack's passes per image at most, in attack steps (a forward and a backward): APGD-CE
# 100, APGD-T 9 x 100, FAB-T 9 x 100 steps of two forwards and one backward each (1.5 attack
# steps; counted on torchattacks 3.3), Square 5,000 forward-only queries (half a step each)
AA_PASSES = {
    "off": 0,
    "fast": 100 + 9 * 100,
    "standard": 100 + 9 * 100 + 9 * 100 * 3 // 2 + 5000 // 2,
}
# at least: APGD-CE runs all its iterations on every example it is given (torchattacks, as the
# reference), and an example it breaks goes no further
AA_PASSES_LOW = {"off": 0, "fast": 100, "standard": 100}


class _Enough(Exception):
    """Raised from the learning log once the calibration has its steps."""


@dataclass
class Estimate:
    variant: str
    dataset: str
    trials: int  # trials of the variant (searched + repeats)
    learn_examples: float = 0.0
    learn_seconds: float = 0.0
    train_examples: float = 0.0  # all downstream models of one trial
    train_seconds: float = 0.0
    attack_examples: float = 0.0  # all scoring of one trial (AutoAttack as an upper bound)
    attack_seconds: float = 0.0
    attack_seconds_low: float = 0.0  # AutoAttack's lower bound: every image falls to APGD-CE
    n_train_full: int = 1
    peak_bytes: int | None = None  # see the module docstring; None: not measurable here
    note: str = ""  # why there is no estimate, or what it leaves out
    learn_flops: float = 0.0  # see the module docstring
    train_flops: float = 0.0
    attack_flops: float = 0.0
    attack_flops_low: float = 0.0  # AutoAttack's lower bound, as attack_seconds_low
    counted_only: bool = False  # work counted with stand-in networks, nothing timed

    @property
    def trial_flops(self) -> float:
        return self.learn_flops + self.train_flops + self.attack_flops

    @property
    def trial_seconds(self) -> float:
        return self.learn_seconds + self.train_seconds + self.attack_seconds

    @property
    def trial_examples(self) -> float:
        return self.learn_examples + self.train_examples + self.attack_examples

    def work_epochs(self, examples: float) -> float:
        return examples / max(1, self.n_train_full)


class PeakMemory:
    """Memory held above a starting point, at its highest, while the block runs."""

    STATUS = Path("/proc/self/status")

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:  # "5" resets the resident high-water mark (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
                self.base = self._status_kb("VmRSS") * 1024
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self.peak = max(0, self._status_kb("VmHWM") * 1024 - self.base)

    def _status_kb(self, key: str) -> int:
        for line in self.STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise OSError(f"no {key} in {self.STATUS}")


def gigabytes(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def forward_flops(arch: str, data, settings: dict) -> float:
    """FLOPs of one example's forward pass through `arch` built with `settings` for `data`."""
    key = (arch, tuple(data.input_shape), data.num_classes, tuple(sorted(settings.items())))
    if key not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        from harness.protocol.models import build_model

        # On the meta device: no memory, and ops run as on a GPU (AvgPool2x2's CPU
        # convolution is an implementation detail, not the model's arithmetic).
        with torch.device("meta"):
            net = build_model(arch, tuple(data.input_shape), data.num_classes, **settings).eval()
            x = torch.zeros(1, *data.input_shape)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        _FLOPS[key] = float(counter.get_total_flops())
    return _FLOPS[key]


_FLOPS: dict[tuple, float] = {}


def standin_settings(arch: str, settings: dict) -> dict:
    """`settings` with every size setting the arch takes at its `STANDIN` value."""
    from harness.protocol.models import arch_params

    takes = arch_params(arch)
    return {**settings, **{k: v for k, v in STANDIN.items() if k in takes}}


def work_key(variant) -> str:
    """What a variant's work depends on: its resolved spec but the threat's radius and step
    size (two threat models at the same steps and AutoAttack version do the same work)."""
    import json

    from harness.spec.plan import resolve_trial

    spec = resolve_trial(variant, variant.first_values())
    dumped = spec.model_dump(mode="json")
    dumped["threat"] = {k: v for k, v in dumped["threat"].items() if k not in ("eps", "alpha")}
    return json.dumps(
        [dumped, variant.searched_trials, variant.repeats],
        sort_keys=True,
        default=str,
    )


class LastDataset:
    """`load_data` that keeps the dataset it loaded last (or the error it met): the variants
    of one dataset load it once, and a large one is never held twice. Before loading another
    it drops the last and collects cycles: a calibration's context refers to itself through
    its log callback, which would keep a 5 GB Tiny ImageNet split alive past its variant."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.outcome: object = None

    def __call__(self, dataset_spec):
        from harness.protocol.evaluate import load_data
        from harness.sweep.shared_data import dataset_key

        key = dataset_key(dataset_spec)
        if key != self.key:
            self.key = self.outcome = None
            gc.collect()
            try:
                self.outcome = load_data(dataset_spec)
            except Exception as exc:  # noqa: BLE001 (estimate_variant reports it)
                self.outcome = exc
            self.key = key
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def estimate_plan(plan, *, threads: int = 1, count_only: bool = False) -> Iterator[Estimate]:
    """Each variant's estimate, in the plan's order, as soon as it is made. Variants of one
    dataset share its loaded splits (`LastDataset`); in a count, variants whose work is the
    same (`work_key`: e.g. threats that differ only in radius) share one count."""
    counted: dict[str, Estimate] = {}
    datasets = LastDataset()
    for variant in plan:
        key = work_key(variant) if count_only else ""
        if key in counted:
            yield replace(
                counted[key],
                variant=variant.label,
                dataset=f"{variant.dataset} {variant.threat}".strip(),
            )
            continue
        est = estimate_variant(variant, threads=threads, count_only=count_only, load=datasets)
        if key:
            counted[key] = est
        yield est


def estimate_variant(variant, *, threads: int = 1, count_only: bool = False, load=None) -> Estimate:
    """Calibrate one variant on this machine (see the module docstring); `count_only`: count
    its work with stand-in networks and time nothing. `load`: how to get the data (default
    `harness.protocol.evaluate.load_data`)."""
    from harness.protocol.evaluate import load_data
    from harness.protocol.train import pick_device
    from harness.spec.plan import resolve_trial

    searched = variant.searched_trials
    est = Estimate(
        variant.label,
        f"{variant.dataset} {variant.threat}".strip(),
        searched + variant.repeats,
        counted_only=count_only,
    )
    spec = resolve_trial(variant, variant.first_values())
    try:
        data = (load or load_data)(spec.dataset)
    except Exception as exc:  # noqa: BLE001 (no data here: say so, the plan is still valid)
        est.note = f"no estimate: the data is not here ({str(exc).splitlines()[0][:120]})"
        return est
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        device = pick_device(spec.device)
        if count_only:
            _calibrate(spec, data, device, est)
            return est
        with PeakMemory(device) as memory:
            _calibrate(spec, data, device, est)
        est.peak_bytes = memory.peak
        return est
    finally:
        torch.set_num_threads(before)


def _calibrate(spec, data, device, est: Estimate) -> None:
    """Time the variant's learning, training and attacks (see the module docstring)."""
    from harness.protocol.evaluate import resolve_threat

    threat = resolve_threat(spec, data)
    est.n_train_full = data.n_train_full
    settings = spec.eval.arch_settings

    def flops(arch: str) -> float:  # the spec's network, whatever was built to count
        return forward_flops(arch, data, settings.get(arch, {}))

    ctx = _context(spec, data, device, threat, counted_only=est.counted_only)
    material = _material(spec, data, ctx, est, flops)
    if material is None:
        return
    for arch in ctx.archs:
        _calibrate_arch(arch, spec, data, device, ctx, threat, material, est, flops)
    if spec.threat.autoattack != "off":
        est.note = "AutoAttack counted as a range (every image falls to APGD-CE .. survives all)"


def _context(spec, data, device, threat, *, counted_only: bool):
    """The method's context, as a trial makes it; a count-only one builds stand-in networks
    (`STANDIN`) and counts with a count-only meter."""
    from harness.protocol.evaluate import method_context
    from harness.protocol.models import MODELS
    from harness.protocol.train import WorkMeter

    settings = spec.eval.arch_settings
    if counted_only:
        settings = {a: standin_settings(a, settings.get(a, {})) for a in MODELS.names()}
    meter = WorkMeter(count_only=counted_only)
    return method_context(spec, data, threat, device, meter, arch_settings=settings)


def _material(spec, data, ctx, est: Estimate, flops):
    """(x, y, recipe, loss step) the variant's models train on: for a dataset method, a set
    of random inputs the size of its learned one, after its learning is timed; None when
    that size is known only at the end."""
    from harness.methods import DatasetMethod, make_method
    from harness.protocol.evaluate import downstream_config
    from harness.protocol.train import natural_loss

    method = make_method(spec.method.name, spec.method.params())
    if not isinstance(method, DatasetMethod):
        return data.x_train, data.y_train, method.train_config(ctx.train), method.loss_step(ctx)
    size = _learn(method, ctx, est, flops)
    if size is None:
        return None
    shape = (size, *data.input_shape)
    lo, hi = data.bounds or (None, None)
    x = torch.rand(shape) * (hi - lo) + lo if data.bounds else torch.randn(shape)
    y = torch.randint(0, data.num_classes, (size,))
    # dc and dm train their evaluation models with DSA exactly when `dsa` is on and
    # the data are images (methods/_augment.maybe_augment): the longer default budget.
    augmented = bool(getattr(method.config_for(data.name), "dsa", False)) and data.is_image
    return x, y, downstream_config(spec, size, data.n_train_full, augmented=augmented), natural_loss


def _calibrate_arch(arch, spec, data, device, ctx, threat, material, est: Estimate, flops):
    """One arch's models: a short training run timed and scaled to the recipe, and the
    attacks' passes (timed PGD steps; AutoAttack as a range)."""
    from harness.protocol.train import WorkMeter, train_model

    x, y, cfg, loss_step = material
    models = spec.eval.models_per_arch
    aa_images = capped(len(data.x_test), spec.eval.max_test)
    n_attacked = aa_images + capped(len(data.x_val), spec.eval.max_val)
    batch = min(cfg.batch_size, len(x))
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    sample = rows[: batch * CALIBRATION_BATCHES]
    net, m = ctx.build(arch, seed=0, metered=False), WorkMeter()
    stats = train_model(
        net,
        x[sample],
        y[sample],
        replace(cfg, epochs=1),
        device=device,
        generator=torch.Generator().manual_seed(0),
        loss_step=loss_step,
        meter=m,
    )
    per_example = (m.examples / len(sample), stats.seconds / len(sample))
    n_epochs = cfg.epochs * len(x)
    est.train_examples += models * n_epochs * per_example[0]
    est.train_seconds += models * n_epochs * per_example[1]
    est.train_flops += models * n_epochs * per_example[0] * flops(arch) * PASS_FLOPS
    if est.counted_only:
        pgd_passes, pgd_s = pgd_steps(threat), 0.0
    else:
        pgd_passes, pgd_s = _time_pgd(net, data, threat, device)
        _attack_step(net, data, device)  # a full attack batch, for peak memory
    passes = n_attacked * pgd_passes + aa_images * AA_PASSES[spec.threat.autoattack]
    low = n_attacked * pgd_passes + aa_images * AA_PASSES_LOW[spec.threat.autoattack]
    est.attack_examples += models * passes
    est.attack_flops += models * passes * flops(arch) * ATTACK_PASS_FLOPS
    est.attack_seconds += models * passes * pgd_s
    est.attack_seconds_low += models * low * pgd_s
    est.attack_flops_low += models * low * flops(arch) * ATTACK_PASS_FLOPS


def capped(n: int, cap: int | None) -> int:
    """Examples scored out of `n` under an `eval.max_*` cap (None: all of them)."""
    return n if cap is None else min(n, cap)


def _learn(method, ctx, est: Estimate, flops) -> int | None:
    """Time the learning (a few steps, scaled) and return the learned set's size; its FLOPs
    from the examples each arch saw (`flops(arch)` per example), scaled the same way."""
    from harness.methods import STEP_METRIC

    planned = method.planned_steps()
    marks: list[tuple[float, int, WorkCount]] = []
    start = time.perf_counter()

    def log(metrics: dict[str, float], step: int) -> None:
        if STEP_METRIC in metrics:
            marks.append((time.perf_counter(), ctx.meter.examples, ctx.meter.snapshot()))
            if planned and len(marks) > CALIBRATION_STEPS:
                raise _Enough

    def cost(work: WorkCount) -> float:  # work nobody labelled (none today) at the mean arch
        labelled = {a: n for a, n in work.by_arch.items() if a is not None}
        if not labelled or not sum(labelled.values()):
            return 0.0
        mean = sum(n * flops(a) for a, n in labelled.items()) / sum(labelled.values())
        return sum(
            ((n - work.forward_only[a]) * PASS_FLOPS + work.forward_only[a])
            * (mean if a is None else flops(a))
            for a, n in work.by_arch.items()
        )

    ctx.log = log
    try:
        learned = method.learn(ctx)
    except _Enough:
        learned = None
    if learned is not None:  # it finished: its whole cost was measured
        est.learn_seconds, est.learn_examples = time.perf_counter() - start, ctx.meter.examples
        est.learn_flops = cost(ctx.meter.snapshot())
        return len(learned)
    (t0, w0, a0), (t1, w1, a1) = marks[0], marks[-1]
    steps = len(marks) - 1
    est.learn_seconds = (t0 - start) + (planned - 1) * (t1 - t0) / steps
    est.learn_examples = w0 + (planned - 1) * (w1 - w0) / steps
    # the steps after the first (an arch pool's turns among them) stand for every later step
    est.learn_flops = cost(a0) + (planned - 1) * cost(a1 - a0) / steps
    ipc = getattr(method.config_for(ctx.data.name), "ipc", None)
    if not ipc:
        est.note = "no evaluation estimate: the learned set's size is known only at the end"
        return None
    return int(ipc) * ctx.data.num_classes


def _time_pgd(net, data, threat, device) -> tuple[int, float]:
    """Gradient passes PGD takes per image, and seconds per pass per image on this machine."""
    from harness.protocol.attacks import robust_accuracy

    x, y = data.x_test[:ATTACK_SLICE].to(device), data.y_test[:ATTACK_SLICE].to(device)
    attack = threat.attack(
        bounds=data.bounds, generator=torch.Generator(device=device).manual_seed(0)
    )
    passes = pgd_steps(threat)
    start = time.perf_counter()
    robust_accuracy(net, x, y, attack)
    return passes, (time.perf_counter() - start) / (len(x) * passes)


def pgd_steps(threat) -> int:
    """Gradient passes PGD takes per image: its steps over every restart, and the final check."""
    return threat.steps * max(1, getattr(threat, "restarts", 1)) + 1


def _attack_step(net, data, device) -> None:
    """One gradient step of an attack on a full attack batch: what evaluation holds at most."""
    from harness.protocol.attacks import ATTACK_BATCH

    net.eval()
    x = data.x_test[:ATTACK_BATCH].to(device).requires_grad_(True)
    y = data.y_test[:ATTACK_BATCH].to(device)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    torch.autograd.grad(loss, x)


def hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def flop_text(flops: float) -> str:
    if flops >= 1e14:
        return f"{flops / 1e15:,.1f} PFLOP"
    return f"{flops / 1e12:,.2f} TFLOP" if flops >= 1e10 else f"{flops / 1e9:,.2f} GFLOP"


class CostReport:
    """The CLI's lines for a sweep's cost: a header, one line per variant as soon as it is
    estimated (a GPU spec takes minutes to count here), then the totals. `tflops` None: this
    machine's timed calibration; a rate R: work counted with stand-ins, timed at R."""

    def __init__(self, *, device: str, concurrent: int, tflops: float | None = None):
        self.device, self.concurrent, self.tflops = device, max(1, concurrent), tflops
        self.seconds = self.seconds_low = self.flops = self.flops_low = 0.0

    def header(self) -> str:
        if self.tflops is None:
            return (
                f"cost estimate on this machine ({self.device}; per trial with its threads, "
                f"then {self.concurrent} trials at once):"
            )
        return (
            "work of each trial, counted here with stand-in networks, in FLOPs of the "
            f"spec's networks; time at an assumed sustained {self.tflops:g} TFLOP/s per "
            "trial (one device each):"
        )

    def line(self, e: Estimate) -> str:
        """The variant's line; its cost joins the totals."""
        if e.note.startswith("no estimate"):
            return f"  {e.dataset}  {e.variant}: {e.note}"
        note = f"  [{e.note}]" if e.note and not e.note.startswith("AutoAttack") else ""
        flops, flops_low = e.trial_flops, e.trial_flops - e.attack_flops + e.attack_flops_low
        self.flops, self.flops_low = (
            self.flops + flops * e.trials,
            self.flops_low + flops_low * e.trials,
        )
        if self.tflops is not None:
            rate = self.tflops * 1e12
            return (
                f"  {e.dataset}  {e.variant}: per trial {flop_text(flops)} (learning "
                f"{flop_text(e.learn_flops)}, training {flop_text(e.train_flops)}, attacks "
                f"{flop_span(e.attack_flops_low, e.attack_flops)}; "
                f"{e.work_epochs(e.trial_examples):,.0f} work epochs) = "
                f"{device_span(flops_low / rate, flops / rate)}; x {e.trials} trials = "
                f"{device_span(flops_low * e.trials / rate, flops * e.trials / rate)}" + note
            )
        per = e.trial_seconds
        low = per - e.attack_seconds + e.attack_seconds_low
        self.seconds, self.seconds_low = (
            self.seconds + per * e.trials,
            self.seconds_low + low * e.trials,
        )
        return (
            f"  {e.dataset}  {e.variant}: per trial {span(low, per)} (learning "
            f"{hours(e.learn_seconds)}, training {hours(e.train_seconds)}, attacks "
            f"{span(e.attack_seconds_low, e.attack_seconds)}); work up to "
            f"{e.work_epochs(e.trial_examples):,.0f} epochs ({e.trial_examples:,.0f} examples, "
            f"{flop_text(e.trial_flops)}); x {e.trials} trials = "
            f"{span(low * e.trials, per * e.trials)}; peak memory "
            f"{gigabytes(e.peak_bytes)} above the data" + note
        )

    def totals(self) -> list[str]:
        aa = (
            "the range is AutoAttack's: every image falls to APGD-CE .. every image survives "
            "every attack"
        )
        if self.tflops is not None:
            rate = self.tflops * 1e12
            return [
                f"  total: {flop_span(self.flops_low, self.flops)} = "
                f"{device_span(self.flops_low / rate, self.flops / rate)} at {self.tflops:g} "
                f"TFLOP/s (wall time: that over the devices running trials at once; {aa})"
            ]
        n = self.concurrent
        lines = [
            f"  total: {span(self.seconds_low, self.seconds)} of trial time, "
            f"{span(self.seconds_low / n, self.seconds / n)} of wall time with {n} trials "
            f"at once ({aa})"
        ]
        if self.seconds > 0:
            lines.append(
                f"  work: {flop_text(self.flops)} in all; sustained here: "
                f"{self.flops / self.seconds / 1e12:.3f} TFLOP/s per trial (a rate for "
                "--assume-tflops on this device)"
            )
        return lines


def device_span(low: float, high: float) -> str:
    """Device time in hours past two hours, in seconds or minutes below."""
    if high < 2 * 3600:
        return span(low, high) + " of device time"
    a, b = f"{low / 3600:,.1f}", f"{high / 3600:,.1f}"
    return (a if a == b else f"{a}..{b}") + " device-hours"


def flop_span(low: float, high: float) -> str:
    a, b = flop_text(low), flop_text(high)
    return a if a == b else f"{a}..{b}"


def span(low: float, high: float) -> str:
    a, b = hours(low), hours(high)
    return a if a == b else f"{a}..{b}"


def concurrency(spec, cpus: float | None = None, gpus: float | None = None) -> int:
    """Trials this machine runs at once under the spec's resources."""
    import os

    cpus = cpus if cpus is not None else float(os.cpu_count() or 1)
    gpus = gpus if gpus is not None else float(torch.cuda.device_count())
    slots = cpus / spec.resources.cpu
    if spec.resources.gpu > 0:
        slots = min(slots, gpus / spec.resources.gpu) if gpus else 0
    return max(1, math.floor(slots))
