"""Contracts every registered method, pipeline and baseline keeps.

Parametrized over the registries, so a new entry is tested by being registered:

- a method builds from its ``Params`` (defaults plus the required fields' ``example``), trains
  a few steps in a plain loop (attach / penalty / step), resumes *bit-identically* from a
  state_dict taken mid-training (model, optimizer and method state loaded into fresh objects in
  the order ``prunekit.training.fit`` uses) and is deterministic for a seed (that
  ``finalize()`` returns a Mask on a plain model is test_registries.py's check); bad parameters raise a ValueError naming the parameter and
  what is accepted;
- a pipeline / baseline params class parses from YAML-like data with its examples, rejects a
  bad value with the key path, and gives every required field an ``example``.
"""
import copy
import dataclasses
import typing

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import params as valid
from prunekit.experiments.schema import SpecError, parse
from prunekit.methods import METHODS
from prunekit.pipelines import BASELINES, PIPELINES

from conftest import TinyNet

STEPS, INTERRUPT_AT = 8, 4
# Schedules in optimizer steps are shortened to fit the few steps here (the examples are sized
# for real trainings); nothing else is tuned per method.
SHORT_SCHEDULES = {"gmp": {"end_step": 6, "prune_every": 2}}


def method_params(name, **overrides):
    cls = METHODS.get(name)
    return valid.example(cls.Params, **{**SHORT_SCHEDULES.get(name, {}), **overrides})


def batch(step):
    """The data of one step, a function of the step alone (so a resumed run sees the same)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def build(name, seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = METHODS.get(name).from_params(method_params(name))
    return model, optimizer, method


def train(model, optimizer, method, steps):
    for step in steps:
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y) + method.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.step()


def outcome(model, method):
    """Weights and mask after ``finalize()`` (exact tensors, for bit-identical comparisons)."""
    mask = method.finalize()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, {k: v.clone() for k, v in mask.items()}


def assert_identical(a, b):
    (wa, ma), (wb, mb) = a, b
    assert wa.keys() == wb.keys() and ma.keys() == mb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weight {k} differs"
    for k in ma:
        assert torch.equal(ma[k], mb[k]), f"mask {k} differs"


def uninterrupted(name, seed=0):
    model, optimizer, method = build(name, seed)
    method.attach(model, optimizer)
    train(model, optimizer, method, range(STEPS))
    return outcome(model, method)


# ------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("name", METHODS.names())
def test_method_builds_from_its_params(name):
    # finalize() leaving a plain model is checked for every method in test_registries.py
    cls = METHODS.get(name)
    assert dataclasses.is_dataclass(cls.Params), f"{name}: Method.Params must be a dataclass"
    for f in dataclasses.fields(cls.Params):
        if valid.is_required(f):
            assert f.metadata.get("example", valid.NO_EXAMPLE) is not valid.NO_EXAMPLE, \
                f"{name}: required field {f.name!r} needs an example"
    _, _, method = build(name)
    assert type(method) is cls


@pytest.mark.parametrize("name", METHODS.names())
def test_method_builds_from_its_defaults_and_examples_alone(name):
    cls = METHODS.get(name)
    method = cls.from_params(valid.example(cls.Params))
    assert isinstance(method, cls)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_is_deterministic_for_a_seed(name):
    assert_identical(uninterrupted(name), uninterrupted(name))


def resumed(name: str, method_state_first: bool):
    """Train to INTERRUPT_AT, save model / optimizer / method state, restore them into fresh
    objects built from another seed (everything that matters must come from the state) and
    train to the end. ``method_state_first``: the method's state is loaded before ``attach``
    (a plain loop may do that) instead of after (the order of prunekit.training.fit)."""
    model, optimizer, method = build(name)
    method.attach(model, optimizer)
    train(model, optimizer, method, range(INTERRUPT_AT))
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "method": method.state_dict()})

    model, optimizer, method = build(name, seed=123)
    model.load_state_dict(saved["model"])
    if method_state_first:
        method.load_state_dict(saved["method"])
    method.attach(model, optimizer)
    optimizer.load_state_dict(saved["optimizer"])
    if not method_state_first:
        method.load_state_dict(saved["method"])
    train(model, optimizer, method, range(INTERRUPT_AT, STEPS))
    return outcome(model, method)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_resumes_bit_identically_from_a_mid_training_state_dict(name):
    assert_identical(resumed(name, method_state_first=False), uninterrupted(name))


@pytest.mark.parametrize("name", METHODS.names())
def test_method_state_dict_loaded_before_attach_is_applied_at_attach(name):
    assert_identical(resumed(name, method_state_first=True), uninterrupted(name))


def _bad_values(params_class):
    """(field, bad value of the field's type, what the message must say) for every checked
    field of a Params class."""
    out = []
    hints = typing.get_type_hints(params_class)
    for f in dataclasses.fields(params_class):
        check = f.metadata.get("check")
        number = -1 if int in (hints[f.name], *typing.get_args(hints[f.name])) else -1.0
        if valid.allowed_choices(f) is not None:
            out.append((f.name, "no-such-choice", "choose one of"))
        elif check is valid.sparsity:
            out.append((f.name, 1.5, "[0, 1)"))
        elif check is valid.fraction_kept:
            out.append((f.name, 1.5, "(0, 1]"))
        elif check is valid.fraction_removed:
            out.append((f.name, 1.5, "[0, 1)"))
        elif check is valid.open_unit:
            out.append((f.name, 1.5, "(0, 1)"))
        elif check in (valid.positive, valid.nonnegative):
            out.append((f.name, number, "must be"))
        elif getattr(check, "__name__", "").startswith("int_at_least"):
            out.append((f.name, -5, "integer >="))
    return out


@pytest.mark.parametrize("name", METHODS.names())
def test_method_rejects_bad_parameters_naming_them(name):
    cls = METHODS.get(name)
    bad = _bad_values(cls.Params)
    assert bad, f"{name}: no checked parameter"
    for field_name, value, accepted in bad:
        p = method_params(name, **{field_name: value})
        with pytest.raises(ValueError) as info:
            cls.from_params(p)
        message = str(info.value)
        assert field_name in message or (name == "sss" and field_name == "factor_lr" and "lr" in message), message
        assert accepted in message, message
        with pytest.raises(ValueError, match=field_name):
            valid.validate(p)


def test_a_sparsity_of_one_and_a_half_is_refused_by_every_method_that_takes_one():
    with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
        pk.methods.get("ste_fixed")(sparsity=1.5)
    with pytest.raises(ValueError, match=r"final_sparsity|sparsity must be"):
        pk.methods.get("gmp")(final_sparsity=1.5, end_step=10)
    with pytest.raises(ValueError, match=r"bound: unknown value 'nope'; choose one of: binary_search"):
        pk.methods.get("ste_fixed")(sparsity=0.5, bound="nope")


# ------------------------------------------------------------------ pipelines, baselines


ENTRIES = [("pipeline", n) for n in PIPELINES.names()] + [("baseline", n) for n in BASELINES.names()]


def _params_class(kind, name):
    return (PIPELINES if kind == "pipeline" else BASELINES).get(name).params


def _example_data(params_class):
    """YAML-like data: every required field's example."""
    return {f.name: f.metadata["example"] for f in dataclasses.fields(params_class)
            if f.init and valid.is_required(f)}


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_every_required_field_has_an_example(kind, name):
    for f in dataclasses.fields(_params_class(kind, name)):
        if f.init and valid.is_required(f):
            assert f.metadata.get("example", valid.NO_EXAMPLE) is not valid.NO_EXAMPLE, \
                f"{kind} {name}: required field {f.name!r} needs an example"


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_params_parse_from_yaml_data_with_their_examples(kind, name):
    cls = _params_class(kind, name)
    data = _example_data(cls)
    p = parse(cls, data, "method.params")
    assert p == valid.example(cls)
    hints = typing.get_type_hints(cls)
    assert set(hints) >= {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_params_reject_a_bad_value_with_its_key_path(kind, name):
    cls = _params_class(kind, name)
    bad = _bad_values(cls)
    if not bad:
        pytest.skip(f"{kind} {name} has no checked field")
    for field_name, value, accepted in bad:
        data = {**_example_data(cls), field_name: value}
        with pytest.raises(SpecError) as info:
            parse(cls, data, "method.params")
        assert info.value.path == f"method.params.{field_name}"
        assert accepted in str(info.value)
    with pytest.raises(SpecError, match=r"method\.params\.no_such_key: unknown key"):
        parse(cls, {**_example_data(cls), "no_such_key": 1}, "method.params")
