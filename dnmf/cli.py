"""The ``dnmf`` command line: parse, call the API, render progress and errors.

Errors a user can cause print one line ``error: ...`` on stderr and exit 1, with no traceback;
typer's own usage errors exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="dnmf",
    help="Distributed, out-of-core non-negative matrix factorization on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


class DType(StrEnum):
    float32 = "float32"
    float64 = "float64"


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def fit(
    input: Annotated[str, typer.Argument(help="Zarr/HDF5/NetCDF/.npy path or fsspec URL of X.")],
    rank: Annotated[int, typer.Option("-k", "--rank", help="Number of components k.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Result store (Zarr).")] = None,
    var: Annotated[str | None, typer.Option(help="Array/variable/dataset inside INPUT.")] = None,
    solver: Annotated[Solver, typer.Option(help="Update rule.")] = Solver.auto,
    loss: Annotated[str, typer.Option(help="Loss (beta-divergence).")] = "frobenius",
    init: Annotated[Init, typer.Option(help="Initialisation.")] = Init.auto,
    max_iter: Annotated[int, typer.Option(help="Maximum iterations.")] = 200,
    tol: Annotated[float, typer.Option(help="Relative loss decrease to stop at.")] = 1e-4,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: fresh).")] = None,
    dtype: Annotated[DType | None, typer.Option(help="Compute dtype.")] = None,
    scheduler: Annotated[str, typer.Option(
        help="auto | threads | sync | local | tcp://host:port")] = "auto",
    workers: Annotated[int | None, typer.Option(help="LocalCluster workers.")] = None,
    memory_limit: Annotated[str | None, typer.Option(
        help="Memory per LocalCluster worker, e.g. 2GB.")] = None,
    max_time: Annotated[float | None, typer.Option(help="Wall-time budget, seconds.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """Factorize INPUT ~= W H and write W, H and the run's metadata to OUT."""
    from dnmf.api import factorize

    if out is None:
        _fail("no output given — pass -o OUT.zarr")

    def progress(info) -> None:  # noqa: ANN001
        if not quiet:
            typer.echo(
                f"iter {info.iteration:4d}  loss {info.loss:.6g}  "
                f"rel.err {info.relative_error:.6f}  {info.seconds:.2f} s"
            )

    result = factorize(
        input, rank, var=var, solver=solver.value, beta_loss=loss, init=init.value,
        max_iter=max_iter, tol=tol, random_state=seed,
        dtype=dtype.value if dtype else None, scheduler=scheduler, workers=workers,
        memory_limit=memory_limit, max_time=max_time, out=out, overwrite=overwrite,
        callback=progress,
    )
    if not quiet:
        state = "converged" if result.converged else f"stopped ({result.stop_reason})"
        typer.echo(
            f"{state} after {result.n_iter} iterations: relative error "
            f"{result.relative_error:.6f}, {result.wall_time_s:.1f} s -> {result.path}"
        )


def main() -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    from dnmf.errors import DnmfError

    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except (DnmfError, ValueError, FileNotFoundError, PermissionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        raise
