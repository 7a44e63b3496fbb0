"""dnmf: distributed, out-of-core non-negative matrix factorization on Dask.

``X ~= W @ H`` with X (n_samples, n_features), W (n_samples, k), H (k, n_features), all
non-negative: scikit-learn's orientation. Entry points: :class:`NMF` (estimator),
:func:`factorize` (functional), :func:`load` (a result store), :func:`select_rank` (a survey of
the rank k), and the ``dnmf`` CLI.
"""

from dnmf._version import __version__
from dnmf.errors import DnmfError, DnmfWarning, InputError, OutputError

__all__ = [
    "NMF",
    "DnmfError",
    "DnmfWarning",
    "FitResult",
    "InputError",
    "OutputError",
    "RankReport",
    "__version__",
    "dry_run",
    "factorize",
    "load",
    "matrix_info",
    "select_rank",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):  # lazy: `import dnmf` stays cheap for the CLI's --help
    if name == "NMF":
        from dnmf.estimator import NMF

        return NMF
    if name == "load":
        from dnmf.estimator import NMF

        return NMF.from_store
    if name in ("factorize", "FitResult", "dry_run", "matrix_info"):
        from dnmf import api

        return getattr(api, name)
    if name in ("select_rank", "RankReport"):
        from dnmf import rank

        return getattr(rank, name)
    raise AttributeError(f"module 'dnmf' has no attribute {name!r}")
