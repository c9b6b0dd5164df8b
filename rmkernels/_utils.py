"""Shared helpers: the implementation table (which kernel each op runs where) and argument
validation (errors name the argument)."""
from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


IMPLS = ("auto", "triton", "ext", "reference")
"""The one implementation vocabulary of every op (``impl=``), of ``generate(kernels=)`` and of the trainer."""

# The implementation table: for each op, the kernels it has and the device types each is written
# for, in the order ``"auto"`` prefers them. ``"reference"`` (the eager definition in
# ``rmkernels/reference/``) exists for every op on every device and is ``"auto"``'s last resort.
# A kernel listed for a device also needs its runtime there (see :func:`kernel_runtime`).
IMPL_TABLE: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "rm_stats": (("triton", ("cuda", "cpu")), ("ext", ("cpu",))),
    "rm_loss": (("triton", ("cuda", "cpu")),),
    "rm_linear_loss": (("triton", ("cuda", "cpu")),),
    "history_embed": (("ext", ("cpu", "cuda")),),
    "rm_linear_stats": (("triton", ("cuda", "cpu")), ("ext", ("cpu",))),
}


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1 set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_runtime(kernel: str, device: torch.device) -> str | None:
    """Whether a kind of kernel can run on ``device`` in this process.

    Triton runs on CUDA tensors, and on CPU tensors only in the interpreter (``TRITON_INTERPRET=1``
    set before the kernels are imported). ``ext`` is the compiled extension ``rmkernels._C``: its
    CPU kernels once it is built, its CUDA kernels when it was built with CUDA.

    Parameters
    ----------
    kernel : {"triton", "ext"}
    device : torch.device

    Returns
    -------
    str or None
        ``None`` when it can run, else the reason why not (for error messages).

    Example
    -------
    >>> kernel_runtime("triton", torch.device("cuda"))  # Triton always has a CUDA runtime
    """
    if kernel == "triton":
        if device.type == "cuda" or (device.type == "cpu" and triton_interpret()):
            return None
        return (f"Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before rmkernels' kernels are "
                f"imported to run in the CPU interpreter (got device {device})")
    import rmkernels._ext as ext  # lazily: loading the extension registers its ops

    return None if ext.extension_available(device) else ext.unavailable_reason(device)


def available_impls(op: str, device: torch.device | str) -> tuple[str, ...]:
    """The implementations of ``op`` that can run on ``device`` here, in ``"auto"``'s order, ending
    with ``"reference"``.

    Parameters
    ----------
    op : str
        A key of :data:`IMPL_TABLE`.
    device : torch.device or str

    Returns
    -------
    tuple of str

    Example
    -------
    >>> available_impls("history_embed", "cpu")  # with rmkernels._C built
    ('ext', 'reference')
    """
    if op not in IMPL_TABLE:
        raise ValueError(f"op must be one of {sorted(IMPL_TABLE)}, got {op!r}")
    device = torch.device(device)
    kernels = tuple(k for k, types in IMPL_TABLE[op] if device.type in types and kernel_runtime(k, device) is None)
    return kernels + ("reference",)


def resolve_impl(op: str, impl: str, device: torch.device | str, *, fallback: bool = False) -> str:
    """Map ``impl`` (one of :data:`IMPLS`) to the implementation ``op`` runs on ``device``.

    Parameters
    ----------
    op : str
        A key of :data:`IMPL_TABLE` (``"rm_stats"``, ``"rm_loss"``, ``"rm_linear_loss"``,
        ``"history_embed"``).
    impl : {"auto", "triton", "ext", "reference"}
        ``"auto"``: the first kernel of the op's table row that can run on ``device``, else
        ``"reference"``. ``"reference"``: the eager reference. ``"triton"`` / ``"ext"``: that kernel.
    device : torch.device or str
        The device of the op's tensors.
    fallback : bool
        What happens when ``op`` has no ``impl`` kernel that can run on ``device``. ``False`` (an op
        called directly): ``ValueError`` saying why. ``True`` (a preference handed down by
        ``generate(kernels=...)`` or the trainer to every op they call): the op's ``"auto"`` choice.

    Returns
    -------
    str
        ``"triton"``, ``"ext"`` or ``"reference"``.

    Example
    -------
    >>> resolve_impl("rm_loss", "reference", "cpu")
    'reference'
    >>> resolve_impl("history_embed", "triton", "cpu", fallback=True)  # no Triton kernel: auto's choice
    'ext'
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    device = torch.device(device)
    usable = available_impls(op, device)
    if impl == "auto":
        return usable[0]
    if impl in usable:
        return impl
    if fallback:
        return usable[0]
    written_for = dict(IMPL_TABLE[op]).get(impl)
    if written_for is None:
        have = [k for k, _ in IMPL_TABLE[op]]
        raise ValueError(f"impl={impl!r}: {op} has no {impl} kernel (its kernels: {have}; or 'auto', 'reference')")
    if device.type not in written_for:
        raise ValueError(f"impl={impl!r}: the {impl} kernel of {op} runs on {' / '.join(written_for)} tensors "
                         f"only, got device {device}")
    raise ValueError(f"impl={impl!r} cannot run {op} on {device}: {kernel_runtime(impl, device)}")


def check_tensor(name: str, t, *, dtypes=None, ndim=None, min_ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")


def check_same_device(**tensors) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_index(name: str, value, size: int, size_name: str = "V") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise ValueError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 0 <= value < size:
        raise ValueError(f"{name}={value} is outside [0, {size_name}={size})")
    return value


def _sync_dir(folder: str) -> None:
    """fsync a folder, so that a rename inside it survives a crash (where the OS allows it)."""
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(path, content) -> str:
    """Write a file so that a reader sees the old file or the whole new one, never a part.

    The data go to a temporary file in the same folder (created if missing), which is flushed to
    disk (``fsync``), given the permissions a new file gets under the current umask and renamed
    onto ``path``; the folder is then synced so the rename itself survives a crash. Every writer of
    checkpoints, data shards, board files and results in this package goes through here.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    content : str, bytes or callable
        Text (written as UTF-8), bytes, or ``content(tmp_path)``, a function that writes the
        temporary file itself (e.g. ``lambda tmp: torch.save(state, tmp)``).

    Returns
    -------
    str
        ``path``, as a string.

    Example
    -------
    >>> atomic_write("out/model.json", '{"dim": 128}\\n')  # doctest: +SKIP
    'out/model.json'
    """
    import tempfile

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix="_" + os.path.basename(path))
    try:
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
        else:
            data = content.encode() if isinstance(content, str) else bytes(content)
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(folder)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_dir(path, write) -> str:
    """Write a directory so that a reader sees the old directory or the whole new one, never a part.

    ``write(tmp_dir)`` fills a temporary folder next to ``path`` (files synced to disk), which then
    replaces ``path``: renamed onto it when there is none, else the old one is first renamed aside
    and removed after the swap (a reader between the two renames finds no directory, never a
    mixed one). The companion of :func:`atomic_write` for checkpoint directories (a Hugging Face
    ``save_pretrained`` folder).

    Parameters
    ----------
    path : str or os.PathLike
        Destination directory.
    write : callable
        ``write(tmp_dir)`` writes the directory's files.

    Returns
    -------
    str
        ``path``, as a string.

    Example
    -------
    >>> atomic_write_dir("out/model", lambda d: open(os.path.join(d, "config.json"), "w").write("{}"))  # doctest: +SKIP
    'out/model'
    """
    import shutil
    import tempfile

    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.dirname(path), os.path.basename(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_" + name)
    old = None
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
        for entry in os.listdir(tmp):
            f = os.path.join(tmp, entry)
            if os.path.isfile(f):
                os.chmod(f, 0o666 & ~umask)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=".old_" + name)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _sync_dir(parent)  # the renames survive a crash
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path
