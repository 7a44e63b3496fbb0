"""The ``dnmf`` command line: parse, call the API, render progress and errors.

Streams: stdout carries results only (a command's summary, ``--dry-run``'s plan, ``info``'s
report, or with ``--json`` exactly one JSON object); progress, notes and warnings go to stderr.
Errors a user can cause print one line ``error: ...`` on stderr and exit 1, with no traceback;
typer's own usage errors exit 2; Ctrl-C exits 130. ``DNMF_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="dnmf",
    help="Distributed, out-of-core non-negative matrix factorization on Dask.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from dnmf._version import __version__

        typer.echo(f"dnmf {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print dnmf's version and exit.")] = False) -> None:
    """Distributed, out-of-core non-negative matrix factorization on Dask.

    Results go to stdout (one JSON object with --json), progress and notes to stderr.
    """


class Solver(StrEnum):
    auto = "auto"
    hals = "hals"
    cd = "cd"
    mu = "mu"
    anls = "anls"


class Init(StrEnum):
    auto = "auto"
    random = "random"
    nndsvd = "nndsvd"
    nndsvda = "nndsvda"
    nndsvdar = "nndsvdar"
    spa = "spa"
    vca = "vca"


class Missing(StrEnum):
    error = "error"
    mask = "mask"


class DType(StrEnum):
    float32 = "float32"
    float64 = "float64"


class Device(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


# Options every computing command shares (CONTRACT.md).
SchedulerOpt = Annotated[str, typer.Option(
    help="auto (threads for small X, else a LocalCluster) | threads | sync | local | cuda "
         "(a dask-cuda LocalCUDACluster, one worker per GPU) | tcp://host:port "
         "(DASK_SCHEDULER_ADDRESS is honoured).")]
WorkersOpt = Annotated[int | None, typer.Option(help="LocalCluster worker processes.")]
MemoryOpt = Annotated[str | None, typer.Option(help="Memory per LocalCluster worker, e.g. 2GB.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed (default: fresh, recorded).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing OUT.")]
MaxIterOpt = Annotated[int, typer.Option(help="Maximum iterations.")]
TolOpt = Annotated[float, typer.Option(
    help="Stop when the loss falls by less than this fraction in one iteration.")]
VarOpt = Annotated[str | None, typer.Option(
    help="Array/variable/dataset inside INPUT (a Zarr group, HDF5 file or NetCDF).")]
ReportOpt = Annotated[Path | None, typer.Option(
    help="Also write a self-contained HTML report (figures inline, no network) to this file.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print the result as one JSON object on stdout, nothing else (progress "
                   "stays on stderr; schema: docs, the command line).")]


StorageOpt = Annotated[str | None, typer.Option(
    "--storage-options", help="fsspec options of the URLs read and written (endpoint, "
    "credentials): a JSON object, or a file holding one. Never stored or shown.")]


def _use_storage_options(text: str | None) -> None:
    """Parse --storage-options (JSON text or a JSON file) and use it for this command."""
    from dnmf.errors import InputError
    from dnmf.io.remote import set_storage_options

    if text is None:
        set_storage_options(None)
        return
    source = "--storage-options"
    if not text.lstrip().startswith("{"):
        try:
            source, text = f"--storage-options file {text}", Path(text).read_text()
        except OSError as exc:
            raise InputError(f"cannot read --storage-options file {text}: {exc.strerror} — "
                             "give a JSON object or a readable file holding one") from None
    try:
        options = json.loads(text)
    except ValueError as exc:
        # the text may hold secrets: name the position only, never echo it
        raise InputError(f"{source} is not valid JSON (line {exc.lineno}, column "
                         f"{exc.colno}) — give an object such as "
                         '\'{"endpoint_url": "http://127.0.0.1:9000"}\'') from None
    if not isinstance(options, dict):
        raise InputError(f"{source} must be a JSON object, not {type(options).__name__} — "
                         'give one such as \'{"anon": true}\'')
    set_storage_options(options)


WaitWorkersOpt = Annotated[int, typer.Option(
    "--wait-for-workers", min=1, help="With a scheduler address: start once this many "
    "workers have joined (the job may start before its workers).")]
WaitTimeoutOpt = Annotated[float | None, typer.Option(
    "--wait-timeout", min=0.001, help="Seconds to wait for those workers (default 60, or "
    "DNMF_WAIT_TIMEOUT); then one error line.")]
DashboardOpt = Annotated[str, typer.Option(
    "--dashboard-address", help="Where the dashboard of a LocalCluster started here listens "
    "(default this host only, a free port; e.g. 0.0.0.0:8787 for every interface).")]


def _use_cluster_options(wait_for_workers: int, wait_timeout: float | None,
                         dashboard_address: str, *, announce: bool = False) -> None:
    """The cluster options of this command, where :mod:`dnmf.cluster` reads them (Dask's
    config); with ``announce``, the dashboard link of every cluster is printed (stderr)."""
    import dask

    from dnmf import cluster

    dask.config.set({cluster.WAIT_WORKERS_KEY: wait_for_workers,
                     cluster.WAIT_TIMEOUT_KEY: wait_timeout,
                     cluster.DASHBOARD_KEY: dashboard_address})
    cluster.announce_clusters(_print_dashboard if announce else None)


def _print_dashboard(ctx: Any) -> None:
    if ctx.dashboard_link:
        _log(f"dashboard: {ctx.dashboard_text()}")


def _echo(text: str, quiet: bool = False) -> None:
    """A result line: stdout."""
    from dnmf.io.remote import redact

    if not quiet:
        typer.echo(redact(text))


def _log(text: str, quiet: bool = False) -> None:
    """A note or a log line: stderr (stdout carries results only)."""
    from dnmf.io.remote import redact

    if not quiet:
        typer.echo(redact(text), err=True)


def _print_json(value: Any) -> None:
    """Exactly one JSON object on stdout (NaN and infinities as null; no credentials)."""
    from dnmf.io.remote import redacted
    from dnmf.io.result_store import jsonable

    typer.echo(json.dumps(redacted(jsonable(value)), allow_nan=False))


def _plan_printer(progress: Any) -> Any:
    def on_plan(plan: Any, ctx: Any) -> None:
        progress.echo(f"scheduler: {ctx.describe()}")
        for line in plan.describe():
            progress.echo(f"plan: {line}")

    return on_plan


@app.command()
def fit(
    input: Annotated[str, typer.Argument(help="Zarr/HDF5/NetCDF/.npy path or fsspec URL of X.")],
    rank: Annotated[int, typer.Option("-k", "--rank", help="Number of components k.")],
    out: Annotated[str | None, typer.Option(
        "-o", "--out", help="Result store to write (Zarr): a path or an fsspec URL.")] = None,
    var: VarOpt = None,
    solver: Annotated[Solver, typer.Option(
        help="hals (= cd), mu or anls; auto = hals for frobenius on complete data, else mu.")
                      ] = Solver.auto,
    loss: Annotated[str, typer.Option(
        help="frobenius | kullback-leibler | itakura-saito | a number (β of the "
             "β-divergence).")] = "frobenius",
    alpha_w: Annotated[float, typer.Option(
        "--alpha-w", help="Regularisation of W (scikit-learn's alpha_W, scaled by "
                          "n_features).")] = 0.0,
    alpha_h: Annotated[str, typer.Option(
        "--alpha-h", help="Regularisation of H (scaled by n_samples); 'same' = --alpha-w.")
                       ] = "same",
    l1_ratio: Annotated[float, typer.Option(
        "--l1-ratio", help="0 = L2 (smooth), 1 = L1 (sparse), between: elastic net.")] = 0.0,
    missing: Annotated[Missing, typer.Option(
        help="NaN in X: error, or mask (left out of the fit: masked NMF).")] = Missing.error,
    mask: Annotated[str | None, typer.Option(
        help="Matrix of observed entries (non-zero = observed), same shape as X; implies "
             "--missing mask.")] = None,
    mask_var: Annotated[str | None, typer.Option(
        "--mask-var", help="Array/variable inside --mask.")] = None,
    sum_to_one: Annotated[bool, typer.Option(
        "--sum-to-one", help="Rows of W sum to one (abundances).")] = False,
    init: Annotated[Init, typer.Option(help="Initialisation; auto = nndsvda.")] = Init.auto,
    restarts: Annotated[int, typer.Option(
        help="Runs from R seeds sharing each read of X; the lowest final loss is kept "
             "(R > 1: random init unless --init is given, for the first run).")] = 1,
    max_iter: MaxIterOpt = 200,
    tol: TolOpt = 1e-4,
    seed: SeedOpt = None,
    dtype: Annotated[DType | None, typer.Option(help="Compute dtype (default: X's).")] = None,
    scheduler: SchedulerOpt = "auto",
    workers: WorkersOpt = None,
    memory_limit: MemoryOpt = None,
    device: Annotated[Device, typer.Option(
        help="cpu, or gpu: the panel tasks on CuPy blocks on a CUDA GPU (hals/mu; extra "
             "'gpu').")] = Device.cpu,
    max_time: Annotated[float | None, typer.Option(help="Wall-time budget in seconds.")] = None,
    checkpoint_every: Annotated[int, typer.Option(
        help="Checkpoint into OUT every N iterations (0: never).")] = 10,
    loss_every: Annotated[int | None, typer.Option(
        help="β-divergences and missing values: evaluate the loss every N iterations (and "
             "on the last); NaN in loss_history elsewhere. Default 10 for --loss other than "
             "frobenius, else 1; no effect on Frobenius without missing values.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue an interrupted run in OUT (same input and options; --max-iter may "
             "grow).")] = False,
    overwrite: OverwriteOpt = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the chunk plan, memory per worker and the cost model's "
                          "seconds per iteration; write nothing.")] = False,
    disk_bandwidth: Annotated[float, typer.Option(
        help="With --dry-run: GB/s one worker reads X at, for the predicted time.")] = 0.5,
    network_bandwidth: Annotated[float, typer.Option(
        help="With --dry-run: GB/s of one worker's network link, for the predicted "
             "time.")] = 1.25,
    memory_bandwidth: Annotated[float | None, typer.Option(
        help="With --dry-run: GB/s one worker thread brings a panel into memory at with its "
             "own CPU, for the predicted time [default: 16 where the panels are mapped "
             "chunks of an uncompressed local Zarr, 2.5 (a copy, a decode) otherwise].",
        show_default=False)] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    storage_options: StorageOpt = None,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
) -> None:
    """Factorize INPUT ~= W H and write W, H and the run's metadata to OUT (Zarr)."""
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address)
    _use_storage_options(storage_options)
    import numpy as np

    from dnmf import api
    from dnmf.errors import InputError
    from dnmf.progress import FitProgress

    common = dict(var=var, solver=solver.value, beta_loss=loss, init=init.value,
                  dtype=dtype.value if dtype else None, scheduler=scheduler, workers=workers,
                  memory_limit=memory_limit, out=out, overwrite=overwrite,
                  missing=missing.value, masked=mask is not None, device=device.value)
    variant = dict(alpha_W=alpha_w, alpha_H=_alpha(alpha_h), l1_ratio=l1_ratio, mask=mask,
                   mask_var=mask_var, w_sum_to_one=sum_to_one)
    if dry_run:
        from dnmf.cost_model import Bandwidths

        bandwidths = Bandwidths(disk=disk_bandwidth * 1e9, network=network_bandwidth * 1e9,
                                memory=None if memory_bandwidth is None
                                else memory_bandwidth * 1e9)
        plan = api.dry_run(input, rank, n_restarts=restarts, bandwidths=bandwidths, **common)
        if as_json:
            _print_json({"dry_run": True, "input": plan.source.describe(),
                         "scheduler": plan.where, "solver": plan.solver, "init": plan.init,
                         "plan": plan.plan.as_dict(),
                         "prediction": None if plan.prediction is None
                         else plan.prediction.as_dict(),
                         "bandwidths": {**dataclasses.asdict(plan.bandwidths),
                                        "memory_from_reader": plan.memory_from_reader}})
            return
        for line in plan.describe():
            typer.echo(line)
        typer.echo("dry run: nothing was read or written")
        return
    if out is None:
        raise InputError("no output given — pass -o OUT.zarr (or --dry-run to only plan)")
    if report is not None:
        from dnmf.io.overlap import Stored
        from dnmf.report import check_report_path

        check_report_path(report, {"the input": Stored(input, var), "the mask": mask,
                                   "OUT": out}, overwrite=overwrite)
    try:
        with FitProgress(quiet=quiet) as progress:
            result = api.factorize(
                input, rank, max_iter=max_iter, tol=tol, random_state=seed, max_time=max_time,
                checkpoint_every=checkpoint_every, resume=resume, callback=progress,
                loss_every=loss_every, on_plan=_plan_printer(progress), n_restarts=restarts,
                **_fit_only(common),
                **variant,
            )
    except KeyboardInterrupt as exc:  # typer would swallow the message (and the resume hint)
        _exit_with(str(exc) or "interrupted", 130)
    for note in result.notes:
        _log(f"note: {note}", quiet)
    if report is not None:
        from dnmf.report import fit_report, write_report

        write_report(fit_report(result.path), report)
        _log(f"report: {report}", quiet)
    if as_json:
        _print_json({**_fit_summary(result), "report": None if report is None else str(report)})
        return
    if restarts > 1:
        losses = np.asarray(result.restart_losses)
        _echo(f"restarts: best {result.best_restart} of {restarts}; final losses "
              f"{losses.min():.6e} .. {losses.max():.6e} (spread "
              f"{(losses.max() - losses.min()) / losses.min():.2%} of the best)", quiet)
    state = "converged" if result.converged else f"stopped at {result.stop_reason}"
    _echo(
        f"{state} after {result.n_iter} iterations: relative error {result.relative_error:.6f}, "
        f"wall time {result.wall_time_s:.1f} s; W and H written to {result.path}",
        quiet,
    )


def _fit_summary(result: Any) -> dict[str, Any]:
    """``dnmf fit --json``: the result store and the run's figures."""
    return {
        "path": result.path, "n_components": result.n_components, "n_iter": result.n_iter,
        "converged": result.converged, "stop_reason": result.stop_reason,
        "relative_error": result.relative_error,
        "reconstruction_err": result.reconstruction_err, "wall_time_s": result.wall_time_s,
        "solver": result.solver, "beta_loss": result.beta_loss, "init": result.init,
        "seed": result.seed, "n_restarts": result.n_restarts,
        "best_restart": result.best_restart, "restart_losses": result.restart_losses,
        "scheduler": result.scheduler, "notes": result.notes,
    }


def _alpha(text: str) -> float | str:
    from dnmf.errors import InputError

    if text == "same":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--alpha-h must be a number or 'same'; got {text!r}") from None


def _fit_only(common: dict) -> dict:
    """The shared options without the dry-run-only ``masked`` flag."""
    return {k: v for k, v in common.items() if k != "masked"}


@app.command()
def transform(
    model: Annotated[str, typer.Argument(help="A result store written by dnmf fit.")],
    input: Annotated[str, typer.Argument(help="Rows to transform (same columns as the fit).")],
    out: Annotated[str, typer.Option(
        "-o", "--out", help="Result store to write (Zarr): a path or an fsspec URL.")],
    var: VarOpt = None,
    scheduler: SchedulerOpt = "auto",
    workers: WorkersOpt = None,
    memory_limit: MemoryOpt = None,
    seed: SeedOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    storage_options: StorageOpt = None,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
) -> None:
    """W for the rows of INPUT with the model's H fixed; OUT has the layout of a fit's store."""
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    _use_storage_options(storage_options)
    from dnmf import api
    from dnmf.io.result_store import open_result
    from dnmf.progress import TaskProgress

    with TaskProgress("transforming", quiet=quiet):
        path = api.transform_to_store(model, input, out, var=var, scheduler=scheduler,
                                      workers=workers, memory_limit=memory_limit,
                                      overwrite=overwrite)
    if as_json:
        W, _, _ = open_result(path)
        _print_json({"path": path, "model": model, "input": input,
                     "n_samples": int(W.shape[0]), "n_components": int(W.shape[1])})
        return
    _echo(f"W written to {path} (H copied from {model})", quiet)


@app.command()
def reconstruct(
    result: Annotated[str, typer.Argument(help="A result store written by dnmf fit.")],
    out: Annotated[str, typer.Option(
        "-o", "--out", help="Zarr store for W·H (array X): a path or an fsspec URL.")],
    only_missing: Annotated[str | None, typer.Option(
        "--only-missing", help="The fitted input: keep its values, fill only its NaN.")] = None,
    var: VarOpt = None,
    scheduler: SchedulerOpt = "auto",
    workers: WorkersOpt = None,
    memory_limit: MemoryOpt = None,
    seed: SeedOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
    storage_options: StorageOpt = None,
) -> None:
    """Write W·H chunk by chunk (e.g. to fill the missing entries of a masked fit)."""
    _use_storage_options(storage_options)
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    from dnmf.progress import TaskProgress
    from dnmf.reconstruct import write_reconstruction

    with TaskProgress("writing", quiet=quiet):
        path, n_filled = write_reconstruction(result, out, only_missing=only_missing, var=var,
                                              overwrite=overwrite, scheduler=scheduler)
    what = f"{n_filled:,} missing entries filled" if only_missing else "W·H"
    _echo(f"{what}; written to {path} (array X)", quiet)


@app.command()
def rank(
    input: Annotated[str, typer.Argument(help="Zarr/HDF5/NetCDF/.npy path or fsspec URL of X.")],
    ks: Annotated[str, typer.Option(help="Ranks to survey, A:B inclusive (e.g. 2:20).")],
    runs: Annotated[int, typer.Option(
        help="Runs (seeds) per k, sharing each read of X.")] = 10,
    out: Annotated[str | None, typer.Option(
        "-o", "--out", help="Report to write (Zarr), readable with xarray.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Directory for PNG plots.")] = None,
    var: VarOpt = None,
    heldout_fraction: Annotated[float, typer.Option(
        help="Fraction of entries hidden for the held-out error.")] = 0.1,
    max_iter: MaxIterOpt = 200,
    tol: TolOpt = 1e-4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    scheduler: SchedulerOpt = "auto",
    workers: WorkersOpt = None,
    memory_limit: MemoryOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    storage_options: StorageOpt = None,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
) -> None:
    """Survey ranks A..B: error, consensus stability, silhouette and held-out error per k."""
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    _use_storage_options(storage_options)
    from dnmf.rank import run_rank_cli

    run_rank_cli(input, ks, runs, out, plots, seed, var=var, scheduler=scheduler,
                 workers=workers, memory_limit=memory_limit, max_iter=max_iter, tol=tol,
                 heldout_fraction=heldout_fraction, overwrite=overwrite, quiet=quiet,
                 json=as_json, html=report)


class UnmixInit(StrEnum):
    spa = "spa"
    vca = "vca"
    nndsvda = "nndsvda"
    random = "random"


@app.command()
def unmix(
    cube: Annotated[str, typer.Argument(
        help="Hyperspectral cube: ENVI (.hdr), Zarr, NetCDF, HDF5 or GeoTIFF.")],
    out: Annotated[str, typer.Option(
        "-o", "--out", help="Result store to write (Zarr): a path or an fsspec URL.")],
    endmembers: Annotated[str | None, typer.Option(
        "-k", "--endmembers", help="Number of endmembers, or auto (HySime estimate); with "
                                   "--spectra, the number of spectra.")] = None,
    spectra: Annotated[str | None, typer.Option(
        "--spectra", help="Supervised: abundances against this library's spectra (.sli, "
                          "CSV, splib07 directory, earthlib) in one pass, no NMF.")] = None,
    select: Annotated[str | None, typer.Option(
        "--select", help="With --spectra: comma-separated names to use.")] = None,
    library: Annotated[list[str] | None, typer.Option(
        "--library", help="Name the endmembers by matching this spectral library "
                          "(repeatable; default: earthlib, named only within the "
                          "threshold).")] = None,
    match_threshold: Annotated[float, typer.Option(
        "--match-threshold", help="Largest spectral angle (degrees) that names an "
                                  "endmember.")] = 5.0,
    match_metric: Annotated[str, typer.Option(
        "--match-metric", help="angle | correlation.")] = "angle",
    var: VarOpt = None,
    band_dim: Annotated[str | None, typer.Option(
        "--band-dim", help="The band dimension, when it cannot be detected.")] = None,
    bad_bands: Annotated[str | None, typer.Option(
        "--bad-bands", help="auto (water absorption, <400 and >2450 nm) | none | a list of "
                            "band indices, a-b index ranges and 1340-1460nm ranges "
                            "(default: the input's bbl, else auto when wavelengths are known; "
                            "auto also drops bands that are noise).")] = None,
    init: Annotated[UnmixInit, typer.Option(help="Endmember initialisation.")] = UnmixInit.spa,
    no_sum_to_one: Annotated[bool, typer.Option(
        "--no-sum-to-one", help="Do not constrain abundances to sum to one.")] = False,
    sparsity: Annotated[float, typer.Option(
        help="L1 penalty on abundances (needs --no-sum-to-one).")] = 0.0,
    plots: Annotated[Path | None, typer.Option(help="Directory for PNG plots.")] = None,
    netcdf: Annotated[Path | None, typer.Option(
        help="Also write the result as NetCDF to this file.")] = None,
    geotiff: Annotated[Path | None, typer.Option(
        help="Directory for Cloud-Optimized GeoTIFFs of the maps (abundances, residual, RGB) "
             "with the input's CRS.")] = None,
    scale_factor: Annotated[float | None, typer.Option(
        "--scale-factor", help="Reflectance = stored value x F (e.g. 0.0001), replacing the "
                               "input's scale factor.")] = None,
    ortho: Annotated[bool, typer.Option(
        "--ortho", help="Put the maps on the input's orthorectified grid (EMIT L2A GLT).")
                     ] = False,
    max_iter: MaxIterOpt = 200,
    tol: TolOpt = 1e-4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    scheduler: SchedulerOpt = "auto",
    workers: WorkersOpt = None,
    memory_limit: MemoryOpt = None,
    checkpoint_every: Annotated[int, typer.Option(
        help="Checkpoint the fit into OUT every N iterations (0: never).")] = 10,
    resume: Annotated[bool, typer.Option(
        help="Continue an interrupted unmixing in OUT (same cube and options; --max-iter may "
             "grow).")] = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    storage_options: StorageOpt = None,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
) -> None:
    """Unmix CUBE into endmember spectra and abundance maps (sum-to-one NMF), written to OUT;
    with --spectra, abundances against given spectra in one pass."""
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    _use_storage_options(storage_options)
    from dnmf.errors import InputError
    from dnmf.hyperspectral.unmix import unmix as run_unmix
    from dnmf.progress import FitProgress

    if endmembers is None and spectra is None:
        raise InputError("give -k N (or -k auto), or --spectra LIB for supervised unmixing")
    if endmembers in (None, "auto"):
        k: int | str = "auto"
    else:
        try:
            k = int(endmembers)
        except ValueError:
            raise InputError(f"-k must be an integer or auto; got {endmembers!r}") from None
    if report is not None:
        from dnmf.io.overlap import Stored
        from dnmf.report import check_report_path

        check_report_path(report, {"the cube": Stored(cube, var), "OUT": out},
                          overwrite=overwrite)

    with FitProgress(quiet=quiet) as progress:
        def on_prepared(pm: Any, n: int, estimate: Any) -> None:
            progress.echo(
                f"cube: {pm.shape[0]} x {pm.shape[1]} pixels ({pm.X.shape[0]:,} valid, "
                f"{pm.n_nodata:,} no-data), {int(pm.keep.sum())} of {pm.keep.size} bands used")
            if pm.n_negative_clipped:
                progress.echo(f"note: {pm.n_negative_clipped:,} negative values clipped to 0")
            if estimate is not None:
                progress.echo(estimate.describe())
            progress.echo(f"unmixing into {n} endmembers")

        if spectra is not None:
            progress.echo("unmixing against the given spectra (one pass)")

        result = run_unmix(
            cube, k, var=var, band_dim=band_dim, bad_bands=bad_bands, init=init.value,
            sum_to_one=not no_sum_to_one, sparsity=sparsity, max_iter=max_iter, tol=tol,
            seed=seed, scheduler=scheduler, workers=workers, memory_limit=memory_limit,
            output=out, overwrite=overwrite, plots=plots, netcdf=netcdf, callback=progress,
            on_prepared=on_prepared, checkpoint_every=checkpoint_every, resume=resume,
            spectra=spectra, library=library,
            select=None if select is None else [n.strip() for n in select.split(",")],
            match_threshold=match_threshold, match_metric=match_metric, geotiff=geotiff,
            scale_factor=scale_factor, on_message=progress.echo, ortho=ortho)
    attrs = result.attrs
    if report is not None:
        from dnmf.report import unmixing_report, write_report

        write_report(unmixing_report(result), report)
        _log(f"report: {report}", quiet)
    if spectra is not None:
        _supervised_summary(result, out, plots, quiet, as_json)
        return
    if as_json:
        _print_json({
            "path": out, "report": None if report is None else str(report),
            "n_endmembers": attrs["n_endmembers"], "n_iter": attrs["n_iter"],
            "converged": attrs.get("converged"), "relative_error": attrs["relative_error"],
            "wall_time_s": attrs["wall_time_s"], "plots": None if plots is None else str(plots),
            "netcdf": None if netcdf is None else str(netcdf),
            "n_endmembers_estimate": attrs.get("n_endmembers_estimate"),
            "endmember_names": [str(v) for v in result.coords["endmember_name"].values]
            if "endmember_name" in result.coords else None,
            "match_angles": [float(v) for v in result.coords["match_angle"].values]
            if "match_angle" in result.coords else None})
        return
    _echo(f"{attrs['n_endmembers']} endmembers after {attrs['n_iter']} iterations: relative "
          f"error {attrs['relative_error']:.6f}, wall time {attrs['wall_time_s']:.1f} s; "
          f"written to {out}" + (f"; plots in {plots}" if plots else ""), quiet)
    for line in _identification_lines(result):
        _echo(line, quiet)


def _supervised_summary(result: Any, out: str, plots: Path | None, quiet: bool,
                        as_json: bool) -> None:
    attrs = result.attrs
    names = [str(n) for n in result.coords["endmember_name"].values]
    error = float(result["relative_error"].values)
    if as_json:
        _print_json({"path": out, "n_endmembers": attrs["n_endmembers"], "names": names,
                     "method": attrs["method"], "relative_error": error,
                     "wall_time_s": attrs["wall_time_s"],
                     "plots": None if plots is None else str(plots)})
        return
    _echo(f"{attrs['method']} abundances of {attrs['n_endmembers']} given spectra "
          f"({', '.join(names)}): relative error {error:.6f}; written to {out}", quiet)


def _identification_lines(result: Any) -> list[str]:
    if "match_angle" not in result.coords:
        return []
    lines = []
    for i, name in enumerate(result.coords["endmember_name"].values):
        top = ", ".join(f"{c} {a:.1f}°" for c, a in zip(
            result.coords["match_candidate"].values[i],
            result.coords["match_candidate_angle"].values[i], strict=True) if c)
        lines.append(f"  endmember {i}: {name} (top: {top})")
    return lines


@app.command()
def endmembers(
    cube: Annotated[str, typer.Argument(
        help="Hyperspectral cube: ENVI (.hdr), Zarr, NetCDF, HDF5 or GeoTIFF.")],
    k: Annotated[int, typer.Option("-k", help="Number of endmembers.")],
    out: Annotated[str, typer.Option(
        "-o", "--out", help="Writes OUT.sli (+ .hdr), OUT.csv and OUT.pixels.csv.")],
    method: Annotated[str, typer.Option(
        help="spa | vca | nfindr | atgp (default spa: see benchmarks/README.md).")] = "",
    var: VarOpt = None,
    band_dim: Annotated[str | None, typer.Option(
        "--band-dim", help="The band dimension, when it cannot be detected.")] = None,
    bad_bands: Annotated[str | None, typer.Option(
        "--bad-bands", help="As for dnmf unmix.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (VCA, N-FINDR).")] = 0,
    scheduler: SchedulerOpt = "auto",
    workers: WorkersOpt = None,
    memory_limit: MemoryOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
    storage_options: StorageOpt = None,
) -> None:
    """Extract K endmember spectra of CUBE (pixels) into a spectral library."""
    _use_storage_options(storage_options)
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    from dnmf.hyperspectral.endmembers import (
        DEFAULT_METHOD,
        extract_endmembers,
        write_endmembers,
    )

    result = extract_endmembers(cube, k, method=method or DEFAULT_METHOD, seed=seed, var=var,
                                band_dim=band_dim, bad_bands=bad_bands, scheduler=scheduler,
                                workers=workers, memory_limit=memory_limit)
    paths = write_endmembers(result, out, overwrite=overwrite)
    if as_json:
        _print_json({"files": [str(p) for p in paths], "method": result.method,
                     "passes": result.passes, "wall_time_s": result.wall_time_s,
                     "pixels": result.pixels.tolist()})
        return
    _echo(f"{k} endmembers by {result.method} in {result.passes} passes, "
          f"{result.wall_time_s:.1f} s; written to {paths[0]}, {paths[2]}, {paths[3]}", quiet)


@app.command()
def score(
    result: Annotated[str, typer.Argument(help="A result store written by dnmf unmix.")],
    truth: Annotated[str, typer.Option(
        help="Reference: a Zarr/NetCDF dataset with endmembers_true (endmember, band) and "
             "optionally abundances_true (endmember, y, x), e.g. from dnmf.datasets.")],
    scheduler: SchedulerOpt = "auto",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
    storage_options: StorageOpt = None,
) -> None:
    """Spectral angles (after Hungarian matching) and abundance RMSE against a reference."""
    _use_storage_options(storage_options)
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    from dnmf.cluster import execution_context
    from dnmf.hyperspectral.metrics import format_score, open_dataset
    from dnmf.hyperspectral.metrics import score as run_score

    estimated, reference = open_dataset(result), open_dataset(truth)
    with execution_context(scheduler, x_nbytes=int(estimated.nbytes)) as ctx, ctx.activate():
        report = run_score(estimated, reference)
    if as_json:
        _print_json(report)
        return
    lines = format_score(report)
    for line in lines[:2] if quiet else lines:  # --quiet: the two summary lines only
        typer.echo(line)


@app.command()
def info(
    path: Annotated[str, typer.Argument(help="Zarr/HDF5/NetCDF/.npy path or URL.")],
    var: VarOpt = None,
    rank: Annotated[int | None, typer.Option(
        "-k", "--rank", help="Plan the chunks of a fit of this rank (default min(10, shape)).")
                    ] = None,
    scheduler: SchedulerOpt = "auto",
    as_json: JsonOpt = False,
    storage_options: StorageOpt = None,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
) -> None:
    """Shape, chunks, dtype, codec, sparsity, sizes, range, sign, NaN/Inf, zero rows of a
    matrix (one pass), and the chunk plan a fit would use."""
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address)
    _use_storage_options(storage_options)
    from dnmf import api
    from dnmf.progress import TaskProgress

    with TaskProgress("reading"):
        report = api.matrix_info(path, var=var, scheduler=scheduler, rank=rank)
    if as_json:
        _print_json(report.as_dict())
        return
    for line in report.describe():
        typer.echo(line)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the demo's stores.")
                   ] = Path("dnmf-demo"),
    planted: Annotated[bool, typer.Option(
        "--planted", help="Plain NMF of a planted low-rank matrix instead of unmixing.")
                       ] = False,
    scheduler: Annotated[str, typer.Option(help="Where to run (default: a LocalCluster).")
                         ] = "local",
    workers: WorkersOpt = 2,
    memory_limit: MemoryOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated data and the fit.")] = 0,
    quiet: QuietOpt = False,
    wait_for_workers: WaitWorkersOpt = 1,
    wait_timeout: WaitTimeoutOpt = None,
    dashboard_address: DashboardOpt = "127.0.0.1:0",
) -> None:
    """Unmix a generated hyperspectral scene on a LocalCluster and score it against the truth."""
    _use_cluster_options(wait_for_workers, wait_timeout, dashboard_address, announce=not quiet)
    from dnmf import demo as demos
    from dnmf.progress import FitProgress

    if planted:
        _planted_demo(out, scheduler, workers, memory_limit, seed, quiet)
        return
    rows, cols = demos.SCENE_SHAPE
    _log(f"demo: {rows} x {cols} scene of {demos.SCENE_ENDMEMBERS} measured spectra "
         f"(earthlib) at {demos.SCENE_SNR_DB:g} dB, tiles {demos.SCENE_TILE}, in "
         f"{out}/scene.zarr", quiet)
    with FitProgress(quiet=quiet) as progress:
        def on_prepared(pm: Any, n: int, estimate: Any) -> None:
            progress.echo(f"cube: {pm.X.shape[0]:,} valid pixels, {pm.n_nodata:,} no-data, "
                          f"{int(pm.keep.sum())} bands; unmixing into {n} endmembers")

        res = demos.run_unmix_demo(out, scheduler=scheduler, workers=workers,
                                   memory_limit=memory_limit, seed=seed, callback=progress,
                                   on_prepared=on_prepared)
    attrs = res.result.attrs
    _echo(f"endmembers and abundance maps written to {res.result_path}; plots in "
          f"{res.plots_dir}", quiet)
    _echo(f"{attrs['n_iter']} iterations in {attrs['wall_time_s']:.1f} s: mean spectral angle "
          f"{res.score['mean_sad_deg']:.2f} deg, abundance RMSE "
          f"{res.score['abundance_rmse']:.4f} against the truth", quiet)


def _planted_demo(out: Path, scheduler: str, workers: int | None, memory_limit: str | None,
                  seed: int, quiet: bool) -> None:
    from dnmf.demo import DEMO_RANK, DEMO_SHAPE, run_demo
    from dnmf.progress import FitProgress

    _log(f"demo: planted rank-{DEMO_RANK} matrix {DEMO_SHAPE[0]:,} x {DEMO_SHAPE[1]} "
         f"(float32 Zarr) in {out}/input.zarr", quiet)
    with FitProgress(quiet=quiet) as progress:
        res = run_demo(out, scheduler=scheduler, workers=workers, memory_limit=memory_limit,
                       seed=seed, callback=progress, on_plan=_plan_printer(progress))
    _echo(f"W and H written to {res.result_path} (open with xarray.open_zarr)", quiet)
    _echo(f"relative error {res.relative_error:.4f} (noise level {res.noise_level:.4f}); "
          f"planted components recovered with mean cosine {res.mean_cosine:.4f}; "
          f"{res.fit.n_iter} iterations in {res.fit.wall_time_s:.1f} s", quiet)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _exit_with(message: str, code: int) -> None:
    from dnmf.io.remote import redact

    sys.stderr.write(f"error: {redact(message)}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    from dnmf.errors import DnmfError

    debug = os.environ.get("DNMF_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops a fit like Ctrl-C
    try:
        # typer returns (not raises) an exit code in this mode: 130 for Ctrl-C, or typer.Exit's
        code = app(args=argv, standalone_mode=False)
        if code == 130:
            _exit_with("interrupted", 130)
        if isinstance(code, int) and code:
            sys.exit(code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        _exit_with(str(exc) or "interrupted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's (typer's) usage errors
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        if isinstance(exc, DnmfError | ValueError | FileNotFoundError | PermissionError):
            _exit_with(" ".join(str(exc).split()) or type(exc).__name__, 1)
        _exit_with(f"{type(exc).__name__}: {' '.join(str(exc).split())} "
                   "(rerun with DNMF_DEBUG=1 for a traceback)", 1)
