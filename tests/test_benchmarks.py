"""The benchmark scripts run end to end in seconds on a tiny fake CIFAR-10 (their real runs take minutes)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SMALL = ["--preset", "smoke", "--set", "train.epochs=2", "--set", "data.batch_size=32", "--set", "train.num_threads=1",
         "--set", "train.eval_every=0", "--set", "train.tta_flip=True", "--set", "train.tta_translate=1"]


@pytest.mark.slow
def test_ablation_writes_one_json_per_variant_and_a_table(fake_root, tmp_path, capsys):
    import ablate
    out = tmp_path / "ablation"
    argv = SMALL + ["--only", "full,no_translate,ema", "--data-dir", str(fake_root), "--out-dir", str(out),
                    "--full-run", str(tmp_path / "full-run")]
    assert ablate.main(argv) == 0
    runs = {name: json.loads((out / f"{name}.json").read_text()) for name in ("full", "no_translate", "ema")}
    for r in runs.values():
        assert len(r["epochs"]) == 2 and 0 <= r["final_acc"] <= 1 and r["device"] == "cpu"
        assert math.isnan(r["epochs"][0]["test_acc"]) and r["epochs"][1]["test_acc"] == r["final_acc"]
    assert runs["ema"]["overrides"][-1] == "train.ema=0.99"
    # TTA rows re-evaluate the full run's model; flip + translate is the preset's own evaluation here
    tta = runs["full"]["tta"]
    assert set(tta) == {"tta_none", "tta_flip", "tta_flip_translate"}
    assert tta["tta_flip_translate"] == runs["full"]["final_acc"]
    assert (tmp_path / "full-run" / "last.pt").exists()
    table = (out / "ablation.md").read_text()
    assert "| no_translate | no random translation" in table and "| flip + translate |" in table
    # a second call keeps what was measured and runs nothing again
    capsys.readouterr()
    assert ablate.main(argv) == 0
    assert "full: kept" in capsys.readouterr().out


def test_ablation_refuses_unknown_variants(capsys):
    import ablate
    try:
        ablate.main(["--only", "nope"])
    except SystemExit as e:
        assert e.code == 2
    assert "unknown variant" in capsys.readouterr().err


def test_tta_cost_times_every_setting():
    import tta_cost
    out = tta_cost.main(["--preset", "smoke", "--images", "64", "--rounds", "1", "--set", "train.num_threads=1"])
    assert list(out) == ["none", "flip", "flip + translate"] and all(t > 0 for t in out.values())


def test_checkpoint_benchmark_times_both_ways(capsys):
    import checkpoint
    out = checkpoint.main(["--preset", "smoke", "--rounds", "1"])
    assert set(out["median_s"]) == {"torch.save", "serialise"} and all(t > 0 for t in out["median_s"].values())
    assert out["tensors"] > 10 and "serialise" in capsys.readouterr().out


def test_step_overhead_times_both_ways_and_their_parts(capsys):
    import step_overhead
    out = step_overhead.main(["--device", "cpu", "--steps", "2", "--rounds", "1", "--commit", "abc1234"])
    assert set(out["us"]) == {"before", "now", "model.train()", "SGD step, before", "SGD step, now"}
    printed = capsys.readouterr().out  # the commit as given: a GPU machine's copy may carry stale git metadata
    assert all(t > 0 for t in out["us"].values()) and "before's speed" in printed and "commit abc1234" in printed


def test_gpu_busy_time_counts_overlapping_kernels_once():
    from types import SimpleNamespace as NS
    import torch
    from profile_steps import _busy_us
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    ev = lambda a, b, d=cuda: NS(device_type=d, time_range=NS(start=a, end=b))  # noqa: E731
    # kernels 0-10 and 5-12 overlap (12 µs busy), 20-25 after a gap; the host op does not count
    assert _busy_us([ev(20, 25), ev(0, 10), ev(5, 12), ev(0, 100, cpu), ev(6, 8)]) == 17


def test_profile_refuses_more_steps_than_an_epoch_in_one_line(fake_root, capsys):
    import profile_steps
    with pytest.raises(SystemExit) as e:
        profile_steps.main(["--preset", "smoke", "--steps", "999", "--data-dir", str(fake_root),
                            "--set", "train.num_threads=1", "--set", "data.batch_size=16"])
    assert e.value.code == 2 and "999 steps to profile, but an epoch has" in capsys.readouterr().err


def test_benchmarks_refuse_an_unknown_preset_in_one_line(capsys):
    import checkpoint
    with pytest.raises(SystemExit) as e:
        checkpoint.main(["--preset", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_profile_report_names_the_ops_behind_the_gpu_time():
    """On a GPU the report adds which host op launched the kernels (a kernel's name may not say); a CPU has none."""
    from profile_steps import report
    p = {"steps": 4, "batch": 128, "compile": "graph", "wall_us_per_step": 4000.0, "gpu_busy_us_per_step": 3800.0,
         "gpu_busy_fraction": 0.95, "host_top": [{"op": "aten::copy_", "us_per_step": 30.0, "calls_per_step": 2.0}],
         "kernels_top": [{"kernel": "void at::native::elementwise_kernel<...direct_copy_kernel_cuda...>",
                          "us_per_step": 400.0, "calls_per_step": 11.0}],
         "launchers_top": [{"op": "aten::copy_", "gpu_us_per_step": 400.0, "calls_per_step": 11.0}]}
    lines = report(p)
    assert "the GPU is the bottleneck" in lines[1]
    assert "| `aten::copy_` | 400 | 11.0 |" in lines
    assert not any("launched" in line for line in report({**p, "launchers_top": []}))


def test_jpeg_again_finds_a_copy_already_written_at_that_quality(fake_root):
    """Images that went through one JPEG round trip barely move in a second at the same quality,
    and move more at another: what BENCHMARKS.md reads from the offline copy."""
    import io
    import numpy as np
    from PIL import Image
    import jpeg_again
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    waves = [[127 + 100 * np.sin(f[c] * xx + f[(c + 1) % 3] * yy + ph[c]) for c in range(3)]
             for f, ph in zip(rng.uniform(0.05, 0.3, (20, 3)), rng.uniform(0, 6, (20, 3)))]
    smooth = np.stack([np.stack(w, -1) for w in waves]).astype(np.uint8)  # (20, 32, 32, 3): smooth, like photos
    once = []
    for img in smooth:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=75)
        once.append(np.asarray(Image.open(buf).convert("RGB")))
    once = np.stack(once)
    assert jpeg_again.round_trip_change(once, 75).mean() < 0.5 * jpeg_again.round_trip_change(smooth, 75).mean()
    assert jpeg_again.round_trip_change(once, 75).mean() < jpeg_again.round_trip_change(once, 50).mean()
    out = jpeg_again.main(["--data-dir", str(fake_root), "--quality", "75", "--images", "5"])
    assert set(out) == {75} and out[75][0] >= 0 and 0 <= out[75][1] <= 1


def test_jpeg_again_refuses_bad_input_in_one_line(tmp_path, capsys):
    import jpeg_again
    for argv, words in ((["--quality", "0"], "--quality must be 1-100"),
                        (["--data-dir", str(tmp_path)], str(tmp_path))):  # DataError says where it looked
        with pytest.raises(SystemExit) as e:
            jpeg_again.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and "Traceback" not in err


@pytest.mark.slow
def test_conv_layouts_lists_each_backward_convolution_and_counts_the_nchw_ones(capsys):
    import conv_layouts
    assert conv_layouts.main(["--preset", "smoke", "--impl", "stacked", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("  (")]
    assert rows and all(line.rstrip().endswith("channels_last") for line in rows)
    assert f"{len(rows)} convolution backwards, 0 handed a gradient not in channels_last" in out
