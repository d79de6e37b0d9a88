"""Block lesions: deleting a block is the net without it; the intact net scores what the run recorded;
random sets are seeded and shared by the twins; bad input gets one sentence and exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import exit_code
from torch import nn

from resgrad.cli import main
from resgrad.data import load_split
from resgrad.experiments.lesion import LesionConfig, blocks_deleted, is_downsampling, run_lesion
from resgrad.models import blocks, build_model


def _randomise_norms(model: nn.Module) -> None:
    """Give every batch-norm layer non-trivial running statistics and affine parameters (eval mode uses them)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _without(model: nn.Module, deleted: str) -> nn.Sequential:
    """The same modules, composed by hand, with the block ``deleted`` left out, or (downsampling) replaced by
    its shortcut module: the net built without that block."""
    layers: list[nn.Module] = [model.stem, model.stem_norm, model.stem_act]
    for name in blocks(model):
        block = model.get_submodule(name)
        if name != deleted:
            layers.append(block)
        elif is_downsampling(block):
            layers.append(block.shortcut)
    return nn.Sequential(*layers, model.pool, nn.Flatten(1), model.fc)


@pytest.mark.parametrize("arch", ["residual", "plain"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_deleting_a_block_gives_exactly_the_net_built_without_it(arch: str, shortcut: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, depth=14, width=4, norm="batch", shortcut=shortcut).eval()
    _randomise_norms(model)
    x = torch.randn(5, 1, 28, 28)
    intact = model(x)
    names = blocks(model)
    assert names == ["stage1.0", "stage1.1", "stage2.0", "stage2.1", "stage3.0", "stage3.1"]
    for name in names:
        with torch.no_grad():
            want = _without(model, name)(x)
            with blocks_deleted(model, [name]):
                lesioned = model(x)
        assert torch.equal(lesioned, want), name
        assert not torch.equal(lesioned, intact)
    # restored afterwards: the same output, the same modules in the same places
    assert torch.equal(model(x), intact)
    assert blocks(model) == names and all(type(model.get_submodule(n)).__name__.endswith("Block") for n in names)


def test_the_seed_resnet_blocks_are_deleted_to_the_identity() -> None:
    torch.manual_seed(0)
    model = build_model("seed-residual").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad(), blocks_deleted(model, ["block1", "block2"]):
        lesioned = model(x)
    h = model.pool(model.act1(model.conv1(x)))
    h = model.pool(model.act2(model.conv2(h)))
    assert torch.equal(lesioned, model.fc(h.flatten(1)))


def test_a_name_that_is_not_a_block_is_refused() -> None:
    model = build_model("residual", depth=8, width=4)
    with pytest.raises(ValueError, match="'stage1' is not a block of this model"):
        with blocks_deleted(model, ["stage1"]):
            pass


# ---------------------------------------------------------------- saved weights


def test_a_run_keeps_its_final_weights_in_model_pt_recorded_in_its_summary(data_dir: Path, tmp_path: Path) -> None:
    import pickle

    from resgrad.config import TrainConfig
    from resgrad.rundir import save_run
    from resgrad.train import load_model, train

    result = train(
        TrainConfig(
            arch="residual",
            depth=8,
            width=4,
            norm="batch",
            steps=3,
            train_subset=300,
            test_subset=50,
            device="cpu",
            data_dir=str(data_dir),
        ),
        progress=False,
    )
    assert all(t.device.type == "cpu" for t in result.model_state.values())
    back = pickle.loads(pickle.dumps(result))  # as sweep workers send it
    assert back.model_state.keys() == result.model_state.keys()
    assert all(torch.equal(back.model_state[k], v) for k, v in result.model_state.items())
    run_dir = save_run(result, tmp_path / "run")
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in result.model_state.items())
    assert "model.pt" in json.loads((run_dir / "summary.json").read_text())["files"]
    model = load_model(run_dir)
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in result.model_state.items())


# ---------------------------------------------------------------- on trained runs


@pytest.fixture(scope="module")
def sweep_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain and residual, depth 14, width 4, batch norm: 20 steps on 1,000 images, tested on 500."""
    out = tmp_path_factory.mktemp("lesion") / "sweep"
    torch.set_num_threads(1)
    code = main(
        [
            "sweep",
            "--out",
            str(out),
            "--archs",
            "plain",
            "residual",
            "--depths",
            "14",
            "--widths",
            "4",
            "--norms",
            "batch",
            "--steps",
            "20",
            "--train-subset",
            "1000",
            "--test-subset",
            "500",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--data-dir",
            str(data_dir),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def _config(data_dir: Path, **kw: object) -> LesionConfig:
    return LesionConfig(device="cpu", data_dir=str(data_dir), **kw)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_lesion_with_no_deletion_reproduces_the_recorded_test_accuracy(sweep_dir: Path, data_dir: Path) -> None:
    frame = run_lesion(sweep_dir, _config(data_dir, max_deleted=3, draws=2), progress=False).frame
    assert sorted(frame["arch"].unique()) == ["plain", "residual"]
    for run_dir in (sweep_dir / "runs").iterdir():
        recorded = json.loads((run_dir / "summary.json").read_text())["final_test_acc"]
        intact = frame[(frame["run_id"] == run_dir.name) & (frame["kind"] == "intact")]
        assert intact["test_acc"].tolist() == [recorded]
        assert (frame.loc[frame["run_id"] == run_dir.name, "intact_test_acc"] == recorded).all()
        assert (frame.loc[frame["run_id"] == run_dir.name, "test_images"] == 500).all()


@pytest.mark.slow
def test_single_deletions_score_what_the_hand_built_net_scores(sweep_dir: Path, data_dir: Path) -> None:
    frame = run_lesion(sweep_dir, _config(data_dir, max_deleted=2, draws=1), progress=False).frame
    test = load_split(False, str(data_dir), 500)
    from resgrad.train import load_model

    run_dir = next((sweep_dir / "runs").glob("residual-*"))
    model = load_model(run_dir)
    for name in ["stage1.1", "stage2.0"]:
        with torch.no_grad():
            logits = _without(model, name).eval()(test.images)
        want = (logits.argmax(1) == test.labels).double().mean().item()
        row = frame[(frame["run_id"] == run_dir.name) & (frame["block"] == name)]
        assert row["kind"].tolist() == ["single"] and row["test_acc"].item() == pytest.approx(want, abs=1e-12)
        assert row["downsampling"].item() == (name == "stage2.0")


@pytest.mark.slow
def test_random_sets_are_seeded_shared_by_the_twins_and_never_hold_a_downsampling_block(
    sweep_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    outs = []
    for i, seed in enumerate([5, 5]):
        out = tmp_path / f"lesion{i}"
        assert (
            exit_code(
                [
                    "lesion",
                    str(sweep_dir),
                    "--out",
                    str(out),
                    "--max-deleted",
                    "4",
                    "--draws",
                    "3",
                    "--seed",
                    str(seed),
                    "--device",
                    "cpu",
                    "--data-dir",
                    str(data_dir),
                    "--quiet",
                ]
            )
            == 0
        )
        assert sorted(p.name for p in out.iterdir()) == [
            "lesion.csv",
            "lesion_n_deleted.png",
            "lesion_single_block.png",
        ]
        outs.append(out)
    assert (outs[0] / "lesion.csv").read_bytes() == (outs[1] / "lesion.csv").read_bytes()
    frame = pd.read_csv(outs[0] / "lesion.csv")
    # depth 14: 6 blocks, 4 with an identity shortcut, so k = 2, 3, 4 with 3 draws each
    random = frame[frame["kind"] == "random"]
    assert sorted(random["n_deleted"].unique()) == [2, 3, 4]
    assert (random.groupby("run_id").size() == 9).all()
    sets = {arch: random[random["arch"] == arch]["block"].tolist() for arch in ("plain", "residual")}
    assert sets["plain"] == sets["residual"]
    for row in random.itertuples():
        names = row.block.split(";")
        assert len(names) == row.n_deleted == len(set(names))
        assert not {"stage2.0", "stage3.0"} & set(names)
    assert len(frame) == 2 * (1 + 6 + 9)


# ---------------------------------------------------------------- report and bad input


@pytest.mark.slow
def test_the_report_gets_a_lesion_section_when_the_sweep_has_one(
    sweep_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep)
    assert (
        exit_code(
            [
                "lesion",
                str(sweep),
                "--max-deleted",
                "2",
                "--draws",
                "1",
                "--device",
                "cpu",
                "--data-dir",
                str(data_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert exit_code(["report", str(sweep)]) == 0
    md = (sweep / "report" / "report.md").read_text()
    assert "## Block lesions" in md and "figures/lesion_single_block.png" in md
    assert (sweep / "report" / "figures" / "lesion_n_deleted.png").is_file()
    table = pd.read_csv(sweep / "report" / "tables" / "lesion.csv")
    assert sorted(table["arch"]) == ["plain", "residual"]
    # One definition, named on the page: identity-shortcut blocks; the CSV keeps fractions, the page shows %.
    frame = pd.read_csv(sweep / "lesion" / "lesion.csv")
    for _, row in table.iterrows():
        mine = frame[(frame["arch"] == row["arch"]) & (frame["kind"] == "single") & frame["downsampling"].eq(False)]
        assert row["one_deleted_acc_mean"] == pytest.approx(mine["test_acc"].mean())
        assert 0 <= row["intact_acc"] <= 1
    section = md[md.index("## Block lesions") :]
    assert "identity-shortcut blocks" in section.split("\n\n")[1]  # the paragraph
    assert "| 1 identity-shortcut block deleted: mean over blocks (%) |" in section
    residual = table[table["arch"] == "residual"].iloc[0]
    assert f"| {100 * residual['one_deleted_acc_mean']:.2f} |" in section


def _make_old(sweep: Path) -> None:
    """Make the sweep's runs look like runs saved before resgrad kept weights: no model.pt, no record of files."""
    for run_dir in (sweep / "runs").iterdir():
        (run_dir / "model.pt").unlink()
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.pop("files", None)
        (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_a_damaged_run_is_left_out_by_name_and_the_others_are_lesioned(
    sweep_dir: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep)
    plain = next((sweep / "runs").glob("plain-*"))
    (plain / "model.pt").write_bytes((plain / "model.pt").read_bytes()[:100])  # cut short
    result = run_lesion(sweep, _config(data_dir, max_deleted=2, draws=1), progress=False)
    assert result.frame["arch"].unique().tolist() == ["residual"]
    assert result.skipped == [
        f"{plain.name}: damaged: model.pt has 100 bytes, "
        f"{json.loads((plain / 'summary.json').read_text())['files']['model.pt']['bytes']} recorded"
    ]
    assert plain.name in caplog.text


@pytest.mark.slow
def test_a_folder_without_weights_exits_2_with_one_sentence(
    sweep_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "old-sweep"
    shutil.copytree(sweep_dir, sweep)
    _make_old(sweep)
    run_dir = next((sweep / "runs").iterdir())
    for source, message in [
        (run_dir, "no model.pt (made before resgrad saved weights)"),
        (sweep, "holds no complete run with saved weights"),
        (tmp_path / "nowhere", "is neither a sweep folder"),
    ]:
        assert exit_code(["lesion", str(source), "--device", "cpu", "--data-dir", str(data_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("resgrad lesion: error:") and message in err and len(err.splitlines()) == 1
        assert not (source / "lesion").exists() and not source.with_name(f"{source.name}-lesion").exists()


@pytest.mark.slow
def test_an_output_folder_holding_other_files_is_refused_before_any_work(
    sweep_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert exit_code(["lesion", str(sweep_dir), "--out", str(out), "--device", "cpu", "--data-dir", str(data_dir)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert exit_code(["lesion", str(sweep_dir), "--draws", "0"]) == 2


@pytest.mark.slow
def test_a_run_folder_is_lesioned_into_a_folder_beside_it_and_left_as_it_was(
    sweep_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "residual-run"
    shutil.copytree(next((sweep_dir / "runs").glob("residual-*")), run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert (
        exit_code(
            [
                "lesion",
                str(run_dir),
                "--max-deleted",
                "2",
                "--draws",
                "1",
                "--device",
                "cpu",
                "--data-dir",
                str(data_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    frame = pd.read_csv(tmp_path / "residual-run-lesion" / "lesion.csv")
    assert frame["run_id"].unique().tolist() == ["residual-run"] and len(frame) == 1 + 6 + 1


@pytest.mark.slow
def test_lesion_prints_a_line_per_run_and_its_table_in_percent_with_k_whole(
    sweep_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["lesion", str(sweep_dir), "--max-deleted", "2", "--draws", "1", "--device", "cpu"]
    assert exit_code([*argv, "--data-dir", str(data_dir), "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("lesion: ")]
    assert [line.split(" (")[0] for line in lines] == ["lesion: 1 of 2 runs done", "lesion: 2 of 2 runs done"]
    assert "elapsed, about" in lines[0] and "left" not in lines[1]
    table = [line for line in captured.out.splitlines() if line.startswith("| batch |")]
    assert len(table) == 2
    frame = pd.read_csv(tmp_path / "a" / "lesion.csv")
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        mine = frame[frame["arch"] == cells[3]]
        assert cells[5] == f"{100 * mine.loc[mine['kind'] == 'intact', 'test_acc'].mean():.2f}"  # intact, in %
        assert cells[9] == "2"  # k: the most identity-shortcut blocks deleted, a whole number
    assert exit_code([*argv, "--data-dir", str(data_dir), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "runs done" not in capsys.readouterr().err
