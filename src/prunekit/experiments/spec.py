"""Experiment specs: typed dataclasses <-> YAML, validated with key paths, hashed to run ids.

An experiment file (``prunekit run`` / ``prunekit sweep``)::

    name: quick_sweep                       # display name; also the sweep's name in the store
    data:   {name: fashion_mnist, train_subset: 4000, batch_size: 128}
    model:  {name: lenet_300_100, width: 1.0}
    train:  {epochs: 2, lr: 0.05, schedule: cosine}       # the dense training recipe
    method:                                  # a registered pipeline and its typed params
      name: oneshot
      label: global MP                       # display only (not hashed)
      params: {sparsity: 0.9, score: magnitude, allocation: global, finetune_epochs: 1}
    seeds: [0, 1]
    baselines: [dense, random_same_allocation]   # registered baselines (or {name, params})
    grid:                                    # optional sweep axes: dotted paths -> lists
      method:                                # a mapping value is merged into the node
        - {label: global MP, params: {score: magnitude, allocation: global}}
        - {label: LAMP, params: {score: lamp, allocation: global}}
      method.params.sparsity: [0.8, 0.95]

Without ``grid`` the file is one :class:`ExperimentSpec`; with it, a :class:`Sweep` of one
spec per combination of the axes. ``grid`` may also be a *list* of such mappings (as
scikit-learn's ``ParameterGrid``): the union of their products, in order. That puts
comparisons that are not a product in one file, e.g. methods whose budget splits differ
(``examples/leaderboard.yaml``: each method's own dense / pruning / fine-tuning epochs adding
up to one total) or a second dataset with other sparsities and seeds::

    grid:
      - {method: [...], method.params.sparsity: [0.9, 0.98]}
      - {data: {name: cifar10}, model: {name: resnet20}, seeds: [[0]], method: [...]} Loading rejects unknown keys and wrong types, naming the
path (``method.params.finetune_epoch: unknown key ...; accepted keys of method.params: ...``).
One seed of one grid point of one method (or baseline) is a :class:`RunSpec`; its *canonical
form* (the resolved spec without display-only fields and without fields equal to their
defaults) is hashed with SHA-256 into the run id ``<method or baseline>-<16 hex>``, which
names the run folder. Leaving defaults out of the hash is open_lth's rule: adding a field
with a default that changes nothing keeps every old id, so never change a default once runs
exist (``tests/test_experiments_spec.py`` pins ids).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import data, models
from .. import device as device_settings
from ..training import OPTIMIZER_NAMES, SCHEDULE_NAMES
from ..params import nonnegative, param, positive
from ..pipelines.registry import BASELINES, PIPELINES
from .schema import SpecError, describe, join_path, reject_unknown, dump_yaml, load_yaml, parse, to_dict

HASH_CHARS = 16


# ---------------------------------------------------------------------------- checks


def _dataset_names():
    return data.names()


def _optimizer_names():
    return OPTIMIZER_NAMES


def _schedule_names():
    return SCHEDULE_NAMES


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _precision(value: Optional[str]) -> Optional[str]:
    return None if value is None else device_settings.precision(value)


def _check_name(value: str) -> None:
    if not _NAME_RE.match(value):
        raise ValueError(f"must be letters, digits, '_', '.' or '-' (it names files), got {value!r}")


# ------------------------------------------------------------------------ the specs


@dataclass
class DataSpec:
    """Dataset and batching (``prunekit.data.loaders`` arguments)."""

    name: str = param(choices=_dataset_names)
    batch_size: int = param(128, check=positive)
    test_batch_size: int = param(1000, check=positive, hashed=False)  # evaluation only
    train_subset: Optional[int] = param(None, check=positive)
    augment: Optional[bool] = None  # None: the dataset's standard recipe
    # File datasets (imagefolder): a DataLoader with this many worker processes (None: the
    # in-process loader). How to read, not what: left out of the run id.
    workers: Optional[int] = param(None, check=nonnegative, hashed=False)
    data_dir: Optional[str] = param(None, hashed=False)  # where the files are, not what they are


@dataclass
class ModelSpec:
    """A model ``prunekit.models.get`` builds: a registered name, a torchvision name or
    ``torchvision:NAME``; ``kwargs`` are its own extra arguments."""

    name: str = param()
    width: float = param(1.0, check=positive)
    kwargs: Dict[str, Any] = param({})

    def _validate(self, path: str) -> None:
        if self.name not in models.MODELS:
            # A torchvision name, or torchvision:NAME for one a prunekit model shadows
            # (torchvision:vgg16 is the ImageNet VGG-16; vgg16 prunekit's CIFAR one).
            try:
                models.check_name(self.name)
            except (KeyError, ValueError) as err:
                raise SpecError(join_path(path, "name"), str(err)) from None
            return
        accepted = models.accepted_kwargs(self.name)
        for key in self.kwargs:
            if key not in accepted or key in ("num_classes", "in_channels", "width"):
                extra = [a for a in accepted if a not in ("num_classes", "in_channels", "width")]
                raise SpecError(join_path(path, f"kwargs.{key}"), f"model {self.name!r} takes no argument "
                                f"{key!r} here; accepted: {', '.join(extra) or '(none)'}")


@dataclass
class TrainSpec:
    """The dense training recipe (``prunekit.training.fit`` keywords). Pipelines train with it
    and override what they change (e.g. a fine-tuning lr)."""

    epochs: int = param(1, check=nonnegative)
    optimizer: str = param("sgd", choices=_optimizer_names)
    lr: float = param(0.1, check=positive)
    momentum: float = param(0.9, check=nonnegative)
    nesterov: bool = False
    weight_decay: float = param(5e-4, check=nonnegative)
    schedule: str = param("constant", choices=_schedule_names)
    schedule_kwargs: Dict[str, Any] = param({})
    optimizer_kwargs: Dict[str, Any] = param({})
    # How to compute, not what: left out of the run id, like the device. None: the
    # CLI's --precision / --channels-last / --compile or the environment decides.
    precision: Optional[str] = param(None, check=_precision, hashed=False,
                                     doc="fp32, bf16 (autocast) or fp16 (autocast + GradScaler)")
    channels_last: Optional[bool] = param(None, hashed=False)
    compile: Optional[str] = param(None, hashed=False, doc="a torch.compile backend, e.g. inductor")

    def fit_kwargs(self) -> Dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


def _parse_named(registry, kind: str, value: Any, path: str, default_name: Optional[str]):
    """Shared parser of ``{name, params[, label]}`` nodes (method, baselines)."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise SpecError(path, f"expected a {kind} name or a mapping with keys name, params, got "
                        f"{describe(value)}")
    accepted = ["name", "params"] + (["label"] if kind == "pipeline" else [])
    reject_unknown(value, accepted, path)
    name = value.get("name", default_name)
    if name is None:
        raise SpecError(join_path(path, "name"), "is required")
    if not isinstance(name, str):
        raise SpecError(join_path(path, "name"), f"expected a string, got {describe(name)}")
    if name not in registry:
        raise SpecError(join_path(path, "name"), f"unknown {kind} {name!r}; registered: "
                        f"{', '.join(registry.names())}")
    entry = registry.get(name)
    raw = value.get("params")
    params = parse(entry.params, {} if raw is None else raw, join_path(path, "params"),
                   where=f"{kind} {name!r}")
    return name, params, value


@dataclass
class MethodSpec:
    """A registered pipeline, its typed params, and a display label (not hashed)."""

    name: str = "dense"
    params: Any = None
    label: Optional[str] = param(None, hashed=False)

    def __post_init__(self):
        if self.params is None:  # built in code: the pipeline's default params
            self.params = PIPELINES.get(self.name).params()

    @classmethod
    def _from_spec(cls, value: Any, path: str) -> "MethodSpec":
        name, params, raw = _parse_named(PIPELINES, "pipeline", value, path, "dense")
        label = raw.get("label")
        if label is not None and not isinstance(label, str):
            raise SpecError(join_path(path, "label"), f"expected a string, got {describe(label)}")
        return cls(name, params, label)

    def _to_spec(self, canonical: bool, minimal: bool = False) -> Dict[str, Any]:
        # minimal (what a person writes) drops the current defaults, canonical the hashed ones
        params = to_dict(self.params, canonical and not minimal, minimal)
        if canonical:
            return {"name": self.name, **({"params": params} if params else {})}
        return {"name": self.name, "label": self.label, "params": params}

    @property
    def pipeline(self):
        return PIPELINES.get(self.name)


@dataclass
class BaselineSpec:
    """A registered baseline and its typed params; YAML accepts the bare name too."""

    name: str
    params: Any = None

    def __post_init__(self):
        if self.params is None:
            self.params = BASELINES.get(self.name).params()

    @classmethod
    def _from_spec(cls, value: Any, path: str) -> "BaselineSpec":
        name, params, _ = _parse_named(BASELINES, "baseline", value, path, None)
        return cls(name, params)

    def _to_spec(self, canonical: bool, minimal: bool = False) -> Dict[str, Any]:
        params = to_dict(self.params, canonical and not minimal, minimal)
        if canonical:
            return {"name": self.name, **({"params": params} if params else {})}
        return {"name": self.name, "params": params}

    @property
    def entry(self):
        return BASELINES.get(self.name)


@dataclass
class RunSpec:
    """One run: one method (or one baseline of it) at one seed. Hashes to its id."""

    data: DataSpec
    model: ModelSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    method: MethodSpec = field(default_factory=MethodSpec)
    seed: int = 0
    baseline: Optional[BaselineSpec] = None  # set: this run is that baseline of the main run

    # -- identity
    def canonical(self) -> Dict[str, Any]:
        """What the id hashes: no display fields, no fields equal to their defaults."""
        return to_dict(self, canonical=True)

    @property
    def digest(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def id(self) -> str:
        kind = self.baseline.name if self.baseline is not None else self.method.name
        return f"{kind}-{self.digest[:HASH_CHARS]}"

    # -- related runs
    def main_spec(self) -> "RunSpec":
        """The main run a baseline run derives from (itself for a main run)."""
        return dataclasses.replace(self, baseline=None)

    def dense_spec(self) -> "RunSpec":
        """The dense run of the same data, model, recipe and seed (shared, content-addressed)."""
        return dataclasses.replace(self, method=MethodSpec("dense"), baseline=None)

    def requirement(self, name: str) -> "RunSpec":
        if name == "dense":
            return self.dense_spec()
        if name == "main":
            if self.baseline is None:
                raise ValueError(f"run {self.id} is not a baseline: it has no main run")
            return self.main_spec()
        raise ValueError(f"unknown requirement {name!r}; known: dense, main")

    def requirements(self) -> List["RunSpec"]:
        names = self.baseline.entry.requires if self.baseline is not None else self.method.pipeline.requires
        return [self.requirement(n) for n in names]

    # -- display
    @property
    def requested_sparsity(self) -> Optional[float]:
        target = self.method.pipeline.target(self.method.params)
        return None if target is None else float(target)

    @property
    def label(self) -> str:
        """How results are grouped and named in tables and plots."""
        main = method_label(self.method)
        if self.baseline is None:
            return main
        return f"{self.baseline.name} ({main})"

    # -- I/O
    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "RunSpec":
        return parse(cls, data, path)

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, text_or_path: Union[str, Path]) -> "RunSpec":
        return cls.from_dict(load_yaml(text_or_path))


def method_label(method: MethodSpec) -> str:
    """The method's label, or ``name(key=value, ...)`` of its non-default params except the
    sparsity (results at different sparsities share one label: a curve)."""
    if method.label:
        return method.label
    # Non-default against the *current* defaults (a moved default's legacy value, which the
    # hash leaves out, is shown: it is not what a spec gets by omitting it).
    shown = {f.name for f in fields(method.params) if f.metadata.get("hash", True)}
    params = {k: v for k, v in to_dict(method.params, minimal=True).items() if k in shown}
    params.pop("sparsity", None)
    if not params:
        return method.name
    inner = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
    return f"{method.name}({inner})"


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


@dataclass
class ExperimentSpec:
    """One comparison point: a run spec without the seed, plus its seeds and baselines."""

    data: DataSpec
    model: ModelSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    method: MethodSpec = field(default_factory=MethodSpec)
    seeds: List[int] = param([0])
    baselines: List[BaselineSpec] = param([])
    name: str = param("experiment", check=_check_name)

    def _validate(self, path: str) -> None:
        if not self.seeds:
            raise SpecError(join_path(path, "seeds"), "needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise SpecError(join_path(path, "seeds"), f"has repeated seeds: {self.seeds}")
        names = [b.name for b in self.baselines]
        if len(set(names)) != len(names):
            raise SpecError(join_path(path, "baselines"), f"names a baseline twice: {names}")

    def run_specs(self) -> List[RunSpec]:
        """The main runs: one per seed."""
        return [RunSpec(self.data, self.model, self.train, self.method, seed) for seed in self.seeds]

    def baseline_specs(self, main: RunSpec) -> List[RunSpec]:
        """The runs of this spec's baselines of ``main``."""
        out = []
        for b in self.baselines:
            if b.entry.same_as is not None:
                out.append(main.requirement(b.entry.same_as))
            else:
                out.append(dataclasses.replace(main, baseline=b))
        return out

    # -- I/O
    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "ExperimentSpec":
        return parse(cls, data, path)

    @classmethod
    def from_yaml(cls, text_or_path: Union[str, Path]) -> "ExperimentSpec":
        return cls.from_dict(load_yaml(text_or_path))

    def to_dict(self) -> Dict[str, Any]:
        plain = to_dict(self)
        return {"name": plain.pop("name"), **plain}  # the name reads best first

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


@dataclass
class Sweep:
    """An experiment file: a base spec plus an optional ``grid`` of axes.

    ``base`` is kept as written (plain data): a grid may supply what the base lacks (e.g.
    every point's sparsity), and merged mapping values must apply to what the user wrote,
    not to a resolved copy. ``points`` are the validated :class:`ExperimentSpec` of every
    combination, last axis varying fastest.
    """

    name: str
    base: Dict[str, Any]
    grid: Union[Dict[str, List[Any]], List[Dict[str, List[Any]]]]  # a list: the union of its grids
    points: List[ExperimentSpec]
    # The paper's reported numbers (see :func:`parse_paper`): shown beside the reproduced
    # ones by ``prunekit report``; not part of any run.
    paper: Optional[Dict[str, Any]] = None

    @classmethod
    def from_dict(cls, data: Any) -> "Sweep":
        if not isinstance(data, dict):
            raise SpecError("", f"an experiment file holds a mapping (data, model, method, ...), got "
                            f"{describe(data)}")
        base = copy.deepcopy(data)
        grid = base.pop("grid", None) or {}
        paper = parse_paper(base.pop("paper", None))
        if isinstance(grid, list):
            parts = [(f"grid[{k}]", g) for k, g in enumerate(grid)]
        else:
            parts = [("grid", grid)]
        points = []
        for where, part in parts:
            points += _expand(base, part, where, prefix=f"{where}." if isinstance(grid, list) else "")
        name = points[0].name
        return cls(name, base, grid, points, paper)

    @classmethod
    def from_yaml(cls, text_or_path: Union[str, Path]) -> "Sweep":
        return cls.from_dict(load_yaml(text_or_path))

    def to_dict(self) -> Dict[str, Any]:
        """The file as written (base + grid): loads back to the same points."""
        return {**copy.deepcopy(self.base), **({"grid": copy.deepcopy(self.grid)} if self.grid else {}),
                **({"paper": copy.deepcopy(self.paper)} if self.paper else {})}

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def with_data_dir(self, data_dir: Optional[str]) -> "Sweep":
        """The same sweep reading its data from ``data_dir`` (a location: ids do not change)."""
        if data_dir is None:
            return self
        base = copy.deepcopy(self.base)
        if isinstance(base.get("data"), dict):
            base["data"]["data_dir"] = data_dir
        points = [dataclasses.replace(p, data=dataclasses.replace(p.data, data_dir=data_dir)) for p in self.points]
        return Sweep(self.name, base, self.grid, points, self.paper)

    @classmethod
    def of(cls, experiment: ExperimentSpec) -> "Sweep":
        """A one-point sweep of a spec built in code."""
        return cls(experiment.name, to_dict(experiment, minimal=True), {}, [experiment])


PAPER_KEYS = ("label", "sparsity", "top1", "top5", "params", "flops", "note")


def parse_paper(value: Any) -> Optional[Dict[str, Any]]:
    """Check a ``paper:`` block: the numbers a paper reports for this experiment::

        paper:
          source: "seed 001, Liu et al. (ICLR 2019), Table 1"
          results:
            - {label: ResNet-56-A, sparsity: null, top1: 93.10, note: fine-tuned, 40 epochs}

    ``label`` (and ``sparsity``, None for a structured or dense configuration) name the
    report's configuration it is compared with; ``top1``/``top5`` in percent; ``params`` /
    ``flops`` counts; ``note`` free text. Only ``source`` and ``results`` are accepted."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError("paper", f"expected a mapping with source and results, got {describe(value)}")
    unknown = sorted(set(value) - {"source", "results"})
    if unknown:
        raise SpecError(f"paper.{unknown[0]}", "unknown key; accepted: source, results")
    results = value.get("results") or []
    if not isinstance(results, list) or not results:
        raise SpecError("paper.results", "must be a non-empty list of {label, sparsity, top1, ...}")
    for i, entry in enumerate(results):
        where = f"paper.results[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
            raise SpecError(where, f"expected a mapping with a label, got {describe(entry)}")
        bad = sorted(set(entry) - set(PAPER_KEYS))
        if bad:
            raise SpecError(f"{where}.{bad[0]}", f"unknown key; accepted: {', '.join(PAPER_KEYS)}")
        for key in ("sparsity", "top1", "top5", "params", "flops"):
            v = entry.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SpecError(f"{where}.{key}", f"expected a number, got {describe(v)}")
    return {"source": str(value.get("source", "")), "results": copy.deepcopy(results)}


def grid_axes(grid: Union[Dict[str, List[Any]], List[Dict[str, List[Any]]]]) -> List[str]:
    """The axis names of a grid (of every grid of a list, each once)."""
    parts = grid if isinstance(grid, list) else [grid]
    return list(dict.fromkeys(axis for part in parts for axis in part))


def _expand(base: Dict[str, Any], grid: Any, path: str, prefix: str) -> List[ExperimentSpec]:
    """The validated points of one grid mapping over ``base`` (last axis varying fastest)."""
    if not isinstance(grid, dict):
        raise SpecError(path, f"expected a mapping of dotted paths to lists, got {describe(grid)}")
    for axis, values in grid.items():
        if not isinstance(axis, str) or not axis:
            raise SpecError(path, f"axis names are dotted key paths, got {describe(axis)}")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}.{axis}", "must be a non-empty list of values")
        if axis.split(".")[0] == "name":
            raise SpecError(f"{path}.{axis}", "the name cannot vary: it names the sweep")
    points = []
    axes = list(grid.items())
    for combo in itertools.product(*[range(len(v)) for _, v in axes]):
        point = copy.deepcopy(base)
        for (axis, values), i in zip(axes, combo):
            _assign(point, axis, copy.deepcopy(values[i]))
        try:
            points.append(ExperimentSpec.from_dict(point))
        except SpecError as err:
            if not axes:
                raise
            where = ", ".join(f"{prefix}{axis}[{i}]" for (axis, _), i in zip(axes, combo))
            raise SpecError(err.path, f"{err.message} (in grid point {where})") from None
    return points


def _assign(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``a.b.c``; a mapping is merged into a mapping there
    (unless it names a different ``name``: then it replaces it, params and all). A bare
    string where a mapping is needed is the ``name`` shorthand (``method: oneshot``)."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if isinstance(node.get(key), str):
            node[key] = {"name": node[key]}
        elif not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    old = node.get(keys[-1])
    if isinstance(old, str) and isinstance(value, dict):
        old = {"name": old}
    node[keys[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def _merge(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    if "name" in new and old.get("name", new["name"]) != new["name"]:
        return new
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


