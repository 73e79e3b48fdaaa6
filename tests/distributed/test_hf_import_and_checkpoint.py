"""HF import at TP1/TP2/PP2 matches transformers; checkpoints reshard TP2 -> TP1xPP2; export round-trips."""

import glob

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import WORKERS, rel_diff, run_torchrun

pytestmark = pytest.mark.distributed


def hf_logits(hf_dir, tokens):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(
    "layout", [(1, []), (2, ["--tp", "2"]), (2, ["--pp", "2"])], ids=["tp1", "tp2", "pp2"]
)
def test_import_logits_match_transformers(hf_llama, hf_llama_tied, tmp_path, layout, tied):
    hf_dir = hf_llama_tied if tied else hf_llama
    nproc, args = layout
    out = tmp_path / "logits.pt"
    run_torchrun(WORKERS / "logits_worker.py", nproc, ["--hf", str(hf_dir), "--out", str(out), *args])
    got = torch.load(out)
    ref = hf_logits(hf_dir, got["tokens"])
    assert got["logits"].shape == ref.shape
    assert rel_diff(got["logits"], ref) < 1e-4


def test_checkpoint_reshards_tp2_to_pp2(hf_llama, tmp_path):
    ckpt = tmp_path / "ckpt"
    saved, loaded = tmp_path / "saved.pt", tmp_path / "loaded.pt"
    run_torchrun(
        WORKERS / "logits_worker.py",
        2,
        ["--hf", str(hf_llama), "--tp", "2", "--save", str(ckpt), "--out", str(saved)],
    )
    run_torchrun(WORKERS / "logits_worker.py", 2, ["--ckpt", str(ckpt), "--pp", "2", "--out", str(loaded)])
    w_saved, w_loaded = torch.load(str(saved) + ".weights"), torch.load(str(loaded) + ".weights")
    assert set(w_saved) == set(w_loaded)
    for name in w_saved:  # bit-identical weights after resharding
        assert torch.equal(w_saved[name], w_loaded[name]), name
    # the step moved the weights away from the HF import, so this is not a trivially equal pair
    original = load_file(str(hf_llama / "model.safetensors"))
    assert not torch.equal(
        original["model.layers.0.mlp.up_proj.weight"], w_saved["model.layers.0.mlp.up_proj.weight"]
    )
    # logits agree up to fp32 summation order (TP2 vs PP2 reduce in different orders)
    assert rel_diff(torch.load(loaded)["logits"], torch.load(saved)["logits"]) < 1e-5


def test_convert_round_trip_is_bit_exact(hf_llama, tmp_path):
    ckpt, out = tmp_path / "mcore", tmp_path / "hf_out"
    run_torchrun(
        "-m megatron_tulu.cli",
        2,
        ["convert", "hf-to-mcore", "--hf", str(hf_llama), "--out", str(ckpt), "parallel.tp=2"],
    )
    run_torchrun(
        "-m megatron_tulu.cli",
        2,
        ["convert", "mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out), "parallel.pp=2"],
    )
    original = load_file(str(hf_llama / "model.safetensors"))
    exported = {}
    for f in glob.glob(str(out / "*.safetensors")):
        exported.update(load_file(f))
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    assert (out / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "hf_out.partial").exists()


def test_crash_mid_save_is_never_latest(hf_llama, tmp_path, monkeypatch):
    from megatron_tulu.engine.checkpoint import find_latest

    ckpt = tmp_path / "ckpt"
    monkeypatch.setenv("MEGATRON_TULU_FAULT", "crash_before_commit")
    with pytest.raises(AssertionError, match="torchrun failed"):
        run_torchrun(
            WORKERS / "logits_worker.py",
            2,
            ["--hf", str(hf_llama), "--tp", "2", "--save", str(ckpt), "--out", str(tmp_path / "x.pt")],
        )
    assert (ckpt / "step_0000001.partial").is_dir()  # shards were written...
    assert any((ckpt / "step_0000001.partial").iterdir())
    assert find_latest(ckpt) is None  # ...but the checkpoint was never committed
    assert not (ckpt / "latest").exists()


@pytest.mark.parametrize(
    "corruption,needle",
    [
        ("drop", "tensor 'model.layers.1.mlp.up_proj.weight' is missing (expected shape [256, 128])"),
        ("reshape", "tensor 'model.layers.1.mlp.up_proj.weight' has shape [128, 256], expected [256, 128]"),
    ],
)
def test_bad_hf_dir_names_the_tensor(hf_llama, tmp_path, corruption, needle):
    import shutil
    import subprocess
    import sys

    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(hf_llama, bad)
    state = load_file(str(bad / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    if corruption == "drop":
        del state[name]
    else:
        state[name] = state[name].t().contiguous()
    save_file(state, str(bad / "model.safetensors"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_tulu.cli",
            "convert",
            "hf-to-mcore",
            "--hf",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert needle in proc.stderr
