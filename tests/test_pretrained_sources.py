"""Pretrained sources (issue #13 C): hf:PATH folders (transformers and sentence-transformers)
load, prune and save back loadable; torchvision weights come from torch hub's cache only;
timm and broken optional packages fail with one clear line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli.main import main
from prunekit.models import OptionalDependencyError, hf, optional

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the quick brown fox jumps over lazy dog".split()


def _tiny_bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **extra)


def _save_tokenizer(folder):
    from transformers import BertTokenizerFast

    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))


@pytest.fixture
def bert_mlm_folder(tmp_path):
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    folder = tmp_path / "bert_mlm"
    BertForMaskedLM(_tiny_bert_config()).save_pretrained(str(folder))
    return folder


def _dimension(word):
    get = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    return get()


@pytest.fixture
def sentence_folder(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    try:  # sentence-transformers >= 6 moved its modules; older releases have them in .models
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:
        from sentence_transformers import models as st_models

    torch.manual_seed(0)
    base = tmp_path / "base"
    BertModel(_tiny_bert_config()).save_pretrained(str(base))
    _save_tokenizer(base)
    word = st_models.Transformer(str(base), max_seq_length=16)
    model = SentenceTransformer(modules=[word, st_models.Pooling(_dimension(word))], device="cpu")
    folder = tmp_path / "st"
    model.save(str(folder))
    return folder


def test_hf_transformers_folder_round_trip(bert_mlm_folder, tmp_path):
    from transformers import AutoModelForMaskedLM

    model = pk.models.get(f"hf:{bert_mlm_folder}")
    assert type(model).__name__ == "BertForMaskedLM"  # the class in config.json, head included
    example = pk.models.example_input(model, seq_len=12)  # no tokenizer: random input_ids of that length
    assert example["input_ids"].shape == (1, 12)
    pk.prune(model, 0.5, score="magnitude", allocation="global", include=["bert.encoder.*"])
    hf.save(model, tmp_path / "out")
    back = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**example).logits, model(**example).logits)
    assert pk.core.accounting.report(back, flops=False, include=["bert.encoder.*"]).sparsity == pytest.approx(0.5, abs=1e-3)


def test_hf_sentence_transformers_folder_example_is_tokenizer_output(sentence_folder):
    model = pk.models.get(f"hf:{sentence_folder}")
    (features,) = pk.models.example_input(model, batch_size=2, seq_len=10)
    assert features["input_ids"].shape == (2, 10) and int(features["attention_mask"].sum()) == 20
    assert features["input_ids"][0, 0].item() == VOCAB.index("[CLS]")  # real tokens, from the tokenizer
    with torch.no_grad():
        assert model(features)["sentence_embedding"].shape == (2, 32)


def test_cli_prune_hf_sentence_transformer_writes_a_loadable_folder(sentence_folder, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "pruned"
    assert main(["prune", "--model", f"hf:{sentence_folder}", "--sparsity", "0.5", "--seq-len", "8",
                 "--out", str(out)]) == 0
    assert "requested sparsity 0.5000, achieved 0.5000" in capsys.readouterr().out
    loaded = SentenceTransformer(str(out), device="cpu")
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert state.keys() == loaded.state_dict().keys()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key])
    rep = json.loads((out / "report.json").read_text())
    assert rep["metrics"]["requested_sparsity"] == 0.5 and rep["metrics"]["achieved_sparsity"] == pytest.approx(0.5)
    assert rep["metrics"]["flops"] > 0
    a, b = loaded.encode(["the quick fox"]), SentenceTransformer(str(sentence_folder), device="cpu").encode(["the quick fox"])
    assert not torch.allclose(torch.as_tensor(a), torch.as_tensor(b))  # the pruned weights were saved


def test_cli_prune_hf_transformers_folder(bert_mlm_folder, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "pruned"
    assert main(["prune", "--model", f"hf:{bert_mlm_folder}", "--sparsity", "0.3", "--include", "bert.encoder.*",
                 "--out", str(out), "--seq-len", "16"]) == 0
    AutoModelForMaskedLM.from_pretrained(str(out))
    assert (out / "state_dict.pt").is_file() and (out / "report.json").is_file()
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["achieved_sparsity"] == pytest.approx(0.3, abs=1e-4)  # over the --include'd tensors


def test_missing_hf_folder_and_bad_cli_use_are_one_line(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pk.models.get(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="neither config.json"):
        pk.models.get(f"hf:{tmp_path}")
    assert main(["prune", "--model", f"hf:{tmp_path / 'nope'}", "--sparsity", "0.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert main(["prune", "--sparsity", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "either a model file" in capsys.readouterr().err


def test_torchvision_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    if optional.reason("torchvision") is not None:
        pytest.skip("torchvision unavailable")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        pk.models.get("squeezenet1_1", weights="DEFAULT")
    expected = tmp_path / "hub" / "checkpoints"
    assert str(expected) in str(info.value) and "download" in str(info.value)
    # The file torchvision would have downloaded: any squeezenet1_1 state_dict at that path.
    name = str(info.value).split("expected ")[1].split(";")[0]
    torch.manual_seed(1)
    source = pk.models.get("squeezenet1_1", num_classes=1000)
    Path(name).parent.mkdir(parents=True)
    torch.save(source.state_dict(), name)
    model = pk.models.get("squeezenet1_1", weights="IMAGENET1K_V1")
    torch.testing.assert_close(model.state_dict()["features.0.weight"], source.state_dict()["features.0.weight"])
    with pytest.raises(ValueError, match="choose one of"):
        pk.models.get("squeezenet1_1", weights="NOPE")
    with pytest.raises(ValueError, match="1000 classes"):
        pk.models.get("squeezenet1_1", weights="DEFAULT", num_classes=10)


def test_timm_missing_or_present(monkeypatch):
    if optional.reason("timm") is not None:
        with pytest.raises(OptionalDependencyError, match="pip install timm"):
            pk.models.get("timm:resnet18")

    class FakeTimm:  # timm's create_model contract, without timm
        @staticmethod
        def create_model(name, **kwargs):
            model = torch.nn.Linear(4, kwargs.get("num_classes", 2))
            model.pretrained_cfg = {"input_size": (3, 32, 32)}
            return model

    monkeypatch.setattr(optional, "require", lambda source, probe=None: FakeTimm)
    monkeypatch.setattr(pk.models.timm_models, "require", lambda source, probe=None: FakeTimm)
    model = pk.models.get("timm:anything", num_classes=5)
    assert model.out_features == 5 and model.input_shape == (3, 32, 32)


def _run_without_shim(code):
    """Python in a fresh process, prunekit from src, *without* the tests' torchvision shim."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "PRUNEKIT_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_broken_torchvision_is_one_clear_line_without_the_shim():
    probe = _run_without_shim("import torchvision")
    if probe.returncode == 0 or "does not exist" not in probe.stderr:
        pytest.skip("torchvision imports natively here: nothing broken to report")
    result = _run_without_shim(
        "import prunekit as pk\n"
        "try:\n    pk.models.get('resnet18')\n"
        "except ValueError as err:\n    print(type(err).__name__ + ': ' + str(err))\n")
    line = result.stdout.strip()
    assert result.returncode == 0 and line.count("\n") == 0, result.stderr
    assert line.startswith("OptionalDependencyError: ") and "torchvision" in line and "uninstall torchvision" in line
    cli = _run_without_shim("import sys\nfrom prunekit.cli.main import main\n"
                            "sys.exit(main(['prune', '--model', 'resnet18', '--sparsity', '0.5', '--out', '/tmp/x']))")
    assert cli.returncode == 2 and cli.stderr.strip().count("\n") == 0
    assert "torchvision is installed but fails to import" in cli.stderr
    listing = _run_without_shim("import sys\nfrom prunekit.cli.main import main\nsys.exit(main(['list']))")
    assert listing.returncode == 0, listing.stderr
    lines = [l for l in listing.stdout.splitlines() if l.startswith("source ")]
    assert [l.split(":")[0] for l in lines] == [f"source {s}" for s in optional.SOURCES]
    assert "source torchvision: unavailable: torchvision is installed but fails to import" in listing.stdout
    assert "source transformers: unavailable: transformers fails to import because torchvision" in listing.stdout
