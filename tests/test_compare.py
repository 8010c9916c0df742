"""Tests of condgen.compare: seeds and their spread, references, failing methods, files, and
fan-out over a real Dask cluster."""

import io
import math

import pandas as pd
import pytest
import torch

import condgen
from condgen.evaluate import NormalNormal, moment_errors
from condgen.methods import NUTS, Importance

TASK = NormalNormal(dim=2, num_obs=1)  # a posterior wide enough for prior importance
FAST = {"importance": Importance(proposal="prior"), "nuts": NUTS(num_chains=2, warmup_steps=60)}


def _report(**options):
    return condgen.compare(
        TASK.model,
        TASK.data,
        methods=options.pop("methods", FAST),
        reference=options.pop("reference", TASK.reference_samples(4000)),
        num_samples=options.pop("num_samples", 400),
        progress=False,
        **options,
    )


def test_moment_errors_are_standardised_per_coordinate():
    """Exact draws give mean errors ~ N(0, 1/N + 1/M) and sd ratios ~ 1 +- 1/sqrt(2N); a
    shift by one sd and a doubled spread show up in their own coordinate only."""
    torch.manual_seed(0)
    n, m = 4000, 8000
    x, ref = torch.randn(n, 3), torch.randn(m, 3)
    errors, ratios = moment_errors(x, ref)
    assert errors.abs().max() < 4 * math.sqrt(1 / n + 1 / m)
    assert (ratios - 1).abs().max() < 4 / math.sqrt(2 * n)
    changed = x * torch.tensor([1.0, 2.0, 1.0]) + torch.tensor([1.0, 0.0, 0.0])
    errors, ratios = moment_errors(changed, ref)
    assert errors[0] == pytest.approx(1.0, abs=0.1) and errors[1:].abs().max() < 0.1
    assert ratios[1] == pytest.approx(2.0, abs=0.1) and (ratios[[0, 2]] - 1).abs().max() < 0.1
    # weights: a weighted sample equals its resampled copy
    weights = torch.rand(n)
    weights = weights / weights.sum()
    weighted, _ = moment_errors(x, ref, weights)
    assert torch.allclose(weighted * ref.std(0).double(), (weights @ x).double() - ref.mean(0))


def test_seeds_give_spread_and_runs():
    report = _report(seeds=3, metrics=("mean_err", "sd_ratio", "sw", "energy", "mmd"))
    assert list(report.table["method"]) == ["importance", "nuts"]
    assert (report.table["seeds"] == 3).all()
    assert len(report.runs) == 6 and sorted(set(report.runs["seed"])) == [0, 1, 2]
    for metric in ("mean_err", "sw", "energy"):
        by_seed = report.runs.groupby("method")[metric]
        pd.testing.assert_series_equal(
            report.table.set_index("method")[metric], by_seed.mean(), check_names=False
        )
        assert (report.table[f"{metric}_sd"] > 0).all()
    # different seeds give different draws; the same seed the same table
    assert report.runs.groupby("method")["sw"].nunique().min() == 3
    again = _report(
        methods={"importance": FAST["importance"]},
        seeds=[0, 1, 2],
        metrics=("mean_err", "sd_ratio", "sw", "energy", "mmd"),
    )
    pd.testing.assert_frame_equal(
        report.table.drop(columns=["time_s", "time_s_sd"]).iloc[:1],
        again.table.drop(columns=["time_s", "time_s_sd"]),
    )
    # correct methods: exact-level errors (4000 reference draws, about 400 draws each)
    assert (report.table["mean_err"] < 0.5).all()
    assert "±" in report.to_markdown() and "seeds" in str(report)


def test_failing_methods_are_rows_with_their_error():
    methods = {
        "importance": Importance(proposal="prior"),
        "dps": "dps",  # needs a path prior: fails when it runs
        "typo": "nutz",  # an unknown name: fails when it is resolved
    }
    report = _report(methods=methods)
    table = report.table.set_index("method")
    assert table.loc["importance", "error"] == "" and table.loc["importance", "seeds"] == 1
    assert "ValueError" in table.loc["dps", "error"] and "x" in table.loc["dps", "error"]
    assert "unknown method 'nutz'" in table.loc["typo", "error"]
    assert math.isnan(table.loc["dps", "mean_err"]) and table.loc["dps", "seeds"] == 0
    assert set(report.posteriors) == {"importance"}
    assert "error" in str(report) and "nutz" in report.to_markdown()


def test_reference_by_method_name_is_flagged_and_accurate():
    report = _report(
        methods={"importance": Importance(proposal="prior")},
        reference=NUTS(num_chains=2, warmup_steps=100),
        reference_samples=2000,
    )
    assert "nuts" in report.reference_label and "approximate" in report.reference_label
    assert "approximate" in str(report)
    exact = TASK.posterior()["x"]
    draws = report.reference["x"]
    assert draws.shape == (2000, 2)
    # NUTS on a Gaussian: ESS is a large fraction of the draws; 5 sigma at ESS >= 500
    se = exact.base_dist.scale / math.sqrt(500)
    assert ((draws.mean(0) - exact.mean).abs() < 5 * se).all()
    assert report.table.loc[0, "mean_err"] < 0.5
    with pytest.raises(TypeError, match="reference"):
        _report(reference=3.0)


def test_csv_markdown_and_files(tmp_path):
    report = _report(seeds=2, title="normal-normal")
    table = pd.read_csv(io.StringIO(report.to_csv()))
    assert list(table["method"]) == ["importance", "nuts"]
    assert {"mean_err", "mean_err_sd", "sw", "time_s", "nfe", "seeds"} <= set(table.columns)
    markdown = report.to_markdown()
    assert markdown.splitlines()[0].startswith("| method | family | seeds |")
    moments = report.moment_errors()
    assert list(moments["coordinate"]) == ["x[0]", "x[1]"] * 2
    written = report.save(tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"table.md", "table.csv", "runs.csv", "draws.png", "importance.nc", "nuts.nc"}
    assert all(p.stat().st_size > 0 for p in written)
    import arviz as az

    idata = az.from_netcdf(str(tmp_path / "out" / "nuts.nc"))
    assert {"posterior", "log_likelihood", "sample_stats"} <= set(idata.groups())
    assert "reference: given draws" in (tmp_path / "out" / "table.md").read_text()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown metrics"):
        _report(metrics=("mean_err", "kl"))
    with pytest.raises(ValueError, match="seeds"):
        _report(seeds=0)


def test_dask_local_cluster_gives_the_local_table():
    """The same seeds give the same draws on a real Dask cluster (two worker processes)."""
    distributed = pytest.importorskip("distributed")
    local = _report(seeds=2)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = _report(seeds=2, executor=client)
    columns = [c for c in local.table.columns if not c.startswith("time_s")]
    pd.testing.assert_frame_equal(local.table[columns], remote.table[columns])
    for label, posterior in local.posteriors.items():
        torch.testing.assert_close(posterior.samples["x"], remote.posteriors[label].samples["x"])


def test_threaded_executors_are_refused():
    """Runs in threads of one process would share Pyro's global handler stack and corrupt
    each other (a thread pool of 4 lost 2-4 of 8 seeds as error rows): they are refused."""
    from concurrent.futures import ThreadPoolExecutor

    distributed = pytest.importorskip("distributed")
    with (
        ThreadPoolExecutor(2) as pool,
        pytest.raises(ValueError, match=r"ThreadPoolExecutor.*ProcessPoolExecutor"),
    ):
        _report(seeds=2, executor=pool)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
        pytest.raises(ValueError, match="threads_per_worker=1"),
    ):
        _report(seeds=2, executor=client)
