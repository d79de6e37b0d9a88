"""resgrad bench: the rows of a tiny grid, FLOP counts against a hand count, devices and bad input."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import exit_code
from torch import nn

from resgrad.bench.config import COLUMNS, MODES, PARTIAL_NAME, STATUS_COLUMNS, BenchConfig, is_noisy
from resgrad.bench.report import bench_markdown, speedup_table, write_bench
from resgrad.bench.run import run_bench
from resgrad.bench.timing import (
    OutOfMemoryError,
    convs_use_tf32,
    count_flops,
    is_oom,
    make_step,
    matmul_precision_like_convs,
)
from resgrad.cli import make_parser
from resgrad.cli.bench import bench_config
from resgrad.errors import UsageError
from resgrad.models import FIXED_ARCHS, build_model

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where CUDA is absent")
TINY = dict(
    archs=["plain", "residual"],
    depths=[8],
    widths=[2],
    batch_sizes=[2],
    threads=1,
    min_run_time=0.01,
    warmup=1,
)


# ---------------------------------------------------------------- rows


@pytest.fixture(scope="module")
def tiny_result():
    return run_bench(BenchConfig(devices=["cpu"], **TINY), progress=False)


def test_tiny_grid_has_the_issue_columns_and_positive_values(tiny_result, tmp_path):
    rows = tiny_result.rows
    assert list(rows.columns) == COLUMNS + STATUS_COLUMNS
    assert len(rows) == 2 * len(MODES)  # 2 archs x 3 modes
    assert (rows["status"] == "ok").all()
    for col in ("median_ms", "images_per_s", "gflop", "gflop_per_s", "pct_of_peak", "params"):
        assert (rows[col] > 0).all(), col
    assert (rows["iqr_ms"] >= 0).all()
    assert set(rows["device"]) == {"cpu"} and (rows["threads"] == 1).all()
    assert (rows["torch_version"] == torch.__version__).all()
    # units: a batch of 2 in median_ms milliseconds
    assert rows["images_per_s"].to_numpy() == pytest.approx(2 / (rows["median_ms"].to_numpy() / 1e3))
    # params from an independent count of the same-shaped net
    assert (rows["params"] == sum(p.numel() for p in build_model("plain", 8, 2).parameters())).all()

    out = write_bench(tiny_result, tmp_path / "b")
    back = pd.read_csv(out / "bench.csv")
    assert list(back.columns) == COLUMNS + STATUS_COLUMNS and len(back) == len(rows)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench.md").read_text()
    assert "resgrad bench" in md and "| arch |" in md and "peak_gflop_per_s" in md
    assert not (out / "speedup.csv").exists()  # one device ran


def test_twins_count_the_same_flops_and_backward_adds_to_forward(tiny_result):
    rows = tiny_result.rows.set_index(["arch", "mode"])["gflop"]
    for mode in MODES:  # the residual addition is element-wise: not a FLOP the counter counts
        assert rows["plain", mode] == rows["residual", mode]
    assert rows["plain", "forward_backward"] > 2 * rows["plain", "forward"]
    assert rows["plain", "train_step"] == rows["plain", "forward_backward"]  # the SGD update is element-wise


def test_two_devices_get_a_speedup_table(tiny_result, tmp_path):
    # No GPU here: a second device's rows are made from the CPU rows with half the time,
    # so the right speedup is known: exactly 2 for every point.
    cuda = tiny_result.rows.assign(device="cuda", median_ms=tiny_result.rows["median_ms"] / 2)
    both = dataclasses.replace(tiny_result, rows=pd.concat([tiny_result.rows, cuda], ignore_index=True))
    table = speedup_table(both.rows)
    assert len(table) == len(tiny_result.rows)
    assert table["speedup"].to_numpy() == pytest.approx(2.0)
    out = write_bench(both, tmp_path / "b")
    assert pd.read_csv(out / "speedup.csv")["speedup"].to_numpy() == pytest.approx(2.0)
    assert "## CPU vs CUDA" in (out / "bench.md").read_text()


def test_a_rerun_into_the_same_folder_leaves_no_file_of_the_earlier_run(tiny_result, tmp_path):
    out = tmp_path / "b"
    cuda = tiny_result.rows.assign(device="cuda")
    write_bench(dataclasses.replace(tiny_result, rows=pd.concat([tiny_result.rows, cuda], ignore_index=True)), out)
    assert (out / "speedup.csv").exists() and (out / "bench.png").exists()
    (out / PARTIAL_NAME).write_text("left by an interrupted run\n")
    (out / "notes.txt").write_text("a file of the user's\n")
    # Second run, one device and no point to plot (every point out of memory): neither file is made.
    oom = tiny_result.rows.assign(status="oom", median_ms=math.nan, images_per_s=math.nan)
    write_bench(dataclasses.replace(tiny_result, rows=oom), out)
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.md", "notes.txt"]
    assert (pd.read_csv(out / "bench.csv")["status"] == "oom").all()


def test_a_fixed_arch_is_timed_once_with_its_own_shape():
    config = BenchConfig(
        devices=["cpu"], **{**TINY, "archs": ["seed-residual"], "depths": [8, 14], "modes": ["forward"]}
    )
    rows = run_bench(config, progress=False).rows
    assert len(rows) == 1  # depth and width do not apply: one point, not one per depth
    assert (rows["depth"].iloc[0], rows["width"].iloc[0]) == FIXED_ARCHS["seed-residual"]
    assert rows["params"].iloc[0] == sum(p.numel() for p in build_model("seed-residual").parameters())


# ---------------------------------------------------------------- the peak's precision


def test_cpu_peak_is_float32_and_bench_md_says_so(tiny_result):
    peaks = tiny_result.peaks
    assert list(peaks["matmul_precision"]) == ["float32"] and (peaks["peak_gflop_per_s"] > 0).all()
    assert "| matmul_precision |" in bench_markdown(tiny_result)


@pytest.fixture
def restore_tf32_flags():
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    yield
    torch.backends.cudnn.allow_tf32 = conv  # the legacy setter sets conv and RNN alike: a state any reader accepts
    torch.set_float32_matmul_precision(matmul)
    assert torch.backends.cudnn.allow_tf32 == conv  # reading it raises if the flags were left mixed


@pytest.mark.parametrize("conv_tf32", [True, False])
def test_cuda_float32_peak_uses_tf32_exactly_when_convolutions_may(restore_tf32_flags, conv_tf32):
    # Setting the flags needs no GPU; torch reads them when a CUDA matmul or conv runs.
    torch.backends.cudnn.allow_tf32 = conv_tf32  # the legacy switch, as a user would set it
    assert convs_use_tf32() is conv_tf32
    before = torch.get_float32_matmul_precision()
    with matmul_precision_like_convs("cuda", "float32") as precision:
        assert precision == ("tf32" if conv_tf32 else "float32")
        assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if conv_tf32 else "ieee")
    assert torch.get_float32_matmul_precision() == before
    for device, dtype in (("cuda", "bfloat16"), ("cpu", "float32")):  # left as they are
        with matmul_precision_like_convs(device, dtype) as precision:
            assert precision == dtype and torch.get_float32_matmul_precision() == before


def test_conv_tf32_is_read_from_the_newer_flags_too(restore_tf32_flags):
    torch.backends.cudnn.conv.fp32_precision = "ieee"  # after this, reading cudnn.allow_tf32 raises in torch >= 2.9
    assert convs_use_tf32() is False
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert convs_use_tf32() is True


# ---------------------------------------------------------------- out of memory, wrapped


def _raise_chain(inner: BaseException, linked_by: str) -> BaseException:
    """The exception a wrapper raises around ``inner``, as dynamo/inductor do: ``from`` it or while handling it."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if linked_by == "cause":
                raise RuntimeError("backend='inductor' raised: see above") from exc
            raise RuntimeError("an error occurred while handling the one above")  # noqa: B904  (the implicit context is what this case tests)
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("linked_by", ["cause", "context"])
def test_out_of_memory_is_found_inside_a_wrapping_exception(linked_by):
    cuda_oom = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    cpu_oom = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 31360000000000 bytes.")
    for inner in (cuda_oom, cpu_oom):
        outer = _raise_chain(inner, linked_by)
        assert "memory" not in str(outer) and is_oom(outer)
        assert is_oom(_raise_chain(outer, linked_by))  # two levels deep
    assert not is_oom(_raise_chain(ValueError("shapes do not match"), linked_by))


def test_is_oom_stops_on_a_chain_that_loops():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert not is_oom(a)


# ---------------------------------------------------------------- FLOPs against a hand count


def test_flop_count_of_conv_plus_linear_equals_hand_count():
    torch.manual_seed(0)
    b = 3
    # (B,1,5,5) -> (B,2,3,3) -> (B,18) -> (B,4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 4))
    x, y = torch.randn(b, 1, 5, 5), torch.randint(0, 4, (b,))
    conv_macs = 2 * 3 * 3 * (1 * 3 * 3)  # out channels x out pixels x (in channels x kernel)
    fc_macs = 18 * 4
    fwd = b * 2 * (conv_macs + fc_macs)
    # backward: the conv needs only its weight gradient (x needs no grad); the linear layer
    # needs the gradient of its input and of its weight: each costs as much as the forward.
    bwd = b * 2 * (conv_macs + 2 * fc_macs)
    assert count_flops(make_step(model, x, y, "forward")) == fwd
    assert count_flops(make_step(model, x, y, "forward_backward")) == fwd + bwd
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    assert count_flops(make_step(model, x, y, "train_step", optimizer=opt)) == fwd + bwd
    assert count_flops(make_step(model, x, y, "forward", dtype="bfloat16")) == fwd  # autocast: same work


def test_flop_count_of_a_depth_8_net_equals_hand_count():
    w, b = 2, 4
    model = build_model("residual", depth=8, width=w)
    x, y = torch.randn(b, 1, 28, 28), torch.randint(0, 10, (b,))

    def conv(pixels: int, cin: int, cout: int) -> int:  # 3x3 conv: 2 FLOPs per multiply-add
        return 2 * pixels * cout * cin * 9

    per_image = (
        conv(28 * 28, 1, w)  # stem
        + conv(28 * 28, w, w)
        + conv(28 * 28, w, w)  # stage 1: one block
        + conv(14 * 14, w, 2 * w)
        + conv(14 * 14, 2 * w, 2 * w)  # stage 2, stride 2
        + conv(7 * 7, 2 * w, 4 * w)
        + conv(7 * 7, 4 * w, 4 * w)  # stage 3, stride 2
        + 2 * 4 * w * 10  # fc
    )
    assert count_flops(make_step(model, x, y, "forward")) == b * per_image


# ---------------------------------------------------------------- devices and bad input


@NO_CUDA
def test_absent_cuda_is_skipped_with_a_note_when_cpu_runs(tmp_path, caplog):
    out = tmp_path / "b"
    argv = [
        "bench",
        "--devices",
        "cpu",
        "cuda",
        "--archs",
        "residual",
        "--depths",
        "8",
        "--widths",
        "2",
        "--batch-sizes",
        "2",
        "--modes",
        "forward",
        "--min-run-time",
        "0.01",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert exit_code(argv) == 0
    assert "cuda" in caplog.text and "absent" in caplog.text
    rows = pd.read_csv(out / "bench.csv")
    assert list(rows["device"]) == ["cpu"]
    assert "skipped (absent): cuda" in (out / "bench.md").read_text()


@NO_CUDA
def test_no_listed_device_present_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "b"
    assert exit_code(["bench", "--devices", "cuda", "--quiet", "--out", str(out)]) == 2
    assert "none of the listed devices" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--depths", "8", "10"], "depth 10 is not of the form 6n+2"),
        (["--batch-sizes", "0"], "batch size must be a whole number >= 1"),
        (["--widths", "0"], "width must be a whole number >= 1"),
        (["--modes", "backward"], "unknown mode 'backward'; allowed: forward, forward_backward, train_step."),
        (["--dtype", "float16"], "unknown dtype 'float16'; allowed: float32, bfloat16."),
        (["--devices", "tpu"], "unknown device 'tpu'; allowed: cpu, cuda."),
        (["--min-run-time", "0"], "min-run-time must be a finite number of seconds > 0, got 0.0."),
        (["--min-run-time", "inf"], "min-run-time must be a finite number of seconds, got inf"),
        (["--threads", "0"], "threads must be a whole number from 1 to 1,024, got 0"),
        (["--warmup", "-1"], "warmup must be a whole number >= 0, got -1"),
        (["--compile", "--cuda-graphs", "on"], "give --compile or --cuda-graphs on, not both"),
    ],
)
def test_bad_input_exits_2_before_anything_runs(tmp_path, capsys, flags, message):
    out = tmp_path / "b"
    assert exit_code(["bench", "--devices", "cpu", *flags, "--quiet", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "kw",
    [
        dict(modes=["backward"]),
        dict(dtypes=["float16"]),
        dict(devices=["tpu"]),
        dict(depths=[9]),
        dict(batch_sizes=[-1]),
        dict(depths=[]),
        dict(depths=8),
        dict(widths=[2.0]),
        dict(threads=True),
        dict(seed=2**63),
        dict(min_run_time=math.nan),
        dict(channels_last="yes"),
        dict(archs=["resnet"]),
    ],
)
def test_library_rejects_bad_config(kw):
    with pytest.raises(UsageError):
        BenchConfig(**{"devices": ["cpu"], **kw}).validate()


def _overcommit_refuses_huge() -> bool:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(
    not _overcommit_refuses_huge(), reason="needs a kernel that refuses an impossible allocation at once"
)
def test_out_of_memory_point_is_recorded_and_the_rest_goes_on():
    huge = 10**10  # a (1e10, 1, 28, 28) float input is 31 TB: the allocator refuses it outright
    config = BenchConfig(
        devices=["cpu"], **{**TINY, "archs": ["residual"], "batch_sizes": [huge, 2], "modes": ["forward"]}
    )
    rows = run_bench(config, progress=False).rows.set_index("batch_size")
    assert rows.loc[huge, "status"] == "oom" and "allocate" in rows.loc[huge, "error"]
    assert math.isnan(rows.loc[huge, "median_ms"])
    assert rows.loc[2, "status"] == "ok" and rows.loc[2, "median_ms"] > 0


def test_a_fixed_arch_alone_ignores_depths_and_widths():
    BenchConfig(devices=["cpu"], archs=["seed-residual"], depths=[9], widths=[0]).validate()  # not used: no error
    with pytest.raises(UsageError, match="depth 9 is not of the form 6n\\+2"):
        BenchConfig(devices=["cpu"], archs=["seed-residual", "plain"], depths=[9]).validate()


# ---------------------------------------------------------------- one declaration per option

BENCH_FLAGS = [  # the flags of `resgrad bench` that set a BenchConfig option, as issue 10 lists them
    "--devices",
    "--archs",
    "--depths",
    "--widths",
    "--batch-sizes",
    "--modes",
    "--dtype",
    "--channels-last",
    "--compile",
    "--cuda-graphs",
    "--min-run-time",
    "--warmup",
    "--seed",
    "--threads",
]


def _bench_parser() -> argparse.ArgumentParser:
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["bench"]


def test_every_bench_option_has_exactly_one_flag_and_its_default():
    actions: dict[str, list[argparse.Action]] = {}
    for action in _bench_parser()._actions:
        actions.setdefault(action.dest, []).append(action)
    names = [f.name for f in dataclasses.fields(BenchConfig)]
    for name in names:
        assert len(actions.get(name, [])) == 1 and len(actions[name][0].option_strings) == 1, name
    assert sorted(actions[name][0].option_strings[0] for name in names) == sorted(BENCH_FLAGS)
    assert set(actions) - set(names) == {"help", "debug", "quiet", "out"}  # nothing else, nothing twice
    assert bench_config(_bench_parser().parse_args([])) == BenchConfig().validate()


ROUND_TRIP = [  # between them, every option away from its default
    BenchConfig(
        devices=("cuda", "cpu"),
        archs=("seed-plain", "residual"),
        depths=(14, 8, 110),
        widths=(3, 1),
        batch_sizes=(5,),
        modes=("train_step", "forward"),
        dtypes=("bfloat16", "float32"),
        channels_last=True,
        compile=True,
        threads=7,
        min_run_time=0.1 + 0.2,
        warmup=0,
        seed=2**63 - 1,
    ),
    BenchConfig(cuda_graphs=("on", "off"), min_run_time=1e-3),
    BenchConfig(),
]


def test_the_round_trip_configs_move_every_option():
    for f in dataclasses.fields(BenchConfig):
        assert any(getattr(c, f.name) != f.default for c in ROUND_TRIP), f"no round-trip config changes {f.name}"


@pytest.mark.parametrize("config", ROUND_TRIP, ids=["all-changed", "graphs", "defaults"])
def test_command_parses_back_into_the_same_config(config, tmp_path):
    out = tmp_path / "a folder"
    argv = shlex.split(config.command(out))
    assert argv[:2] == ["resgrad", "bench"]
    args = _bench_parser().parse_args(argv[2:])
    assert bench_config(args) == config.validate()
    assert args.out == out
    assert bench_config(args).min_run_time == config.min_run_time  # exactly: 0.1 + 0.2 is not 0.3


# ---------------------------------------------------------------- what a person reads: the table, noisy points


def test_a_point_is_noisy_when_its_iqr_is_above_a_quarter_of_its_median():
    assert not is_noisy(16.0, 4.0) and is_noisy(16.0, 4.01)
    assert is_noisy(16.0, 784.0)  # repeats of 16 ms and 800 ms, as on the issue's busy machine
    assert not is_noisy(2.0, 0.0)


def test_a_noisy_point_says_so_in_bench_csv_and_bench_md(tiny_result, tmp_path):
    rows = tiny_result.rows.copy()
    rows["iqr_ms"] = 0.1 * rows["median_ms"]  # clean points...
    rows.loc[0, "iqr_ms"] = 0.5 * rows.loc[0, "median_ms"]  # ...but one, as a busy machine measures it
    rows["noisy"] = [is_noisy(m, i) for m, i in zip(rows["median_ms"], rows["iqr_ms"])]
    out = write_bench(dataclasses.replace(tiny_result, rows=rows), tmp_path / "b")
    back = pd.read_csv(out / "bench.csv")
    assert back["noisy"].tolist() == [True] + [False] * (len(rows) - 1)
    md = (out / "bench.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| plain |") or line.startswith("| residual |")]
    assert [" noisy |" in line for line in table] == back["noisy"].tolist()
    assert f"1 of {len(rows)} points are noisy: their IQR is above 25 % of their median" in md


@pytest.mark.slow
def test_bench_prints_its_main_table(tmp_path, capsys):
    argv = ["bench", "--devices", "cpu", "--archs", "plain", "residual", "--depths", "8", "--widths", "2"]
    argv += ["--batch-sizes", "2", "--modes", "forward", "--min-run-time", "0.01", "--warmup", "1", "--threads", "1"]
    assert exit_code([*argv, "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "b" / "bench.csv")
    assert "| arch | depth | batch_size | mode | median_ms | iqr_ms | noisy | images_per_s |" in out
    for _, r in rows.iterrows():
        assert f"| {r['arch']} | 8 | 2 | forward | {r['median_ms']:.4g} | " in out
