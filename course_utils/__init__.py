"""Companion package of the course "Large Language Models: from Theory to Practice".

One module per topic, mirroring the chapters (see docs/ARCHITECTURE.md). Importing the package
is cheap: heavy libraries (transformers, datasets) are imported by the modules that need them.
"""
from __future__ import annotations

from importlib import metadata

from . import paths as _paths  # noqa: F401  (first: the libraries' caches go under the data folder)
from .profiles import Profile, get_profile
from .quiet import install_noise_filters as _install_noise_filters

_install_noise_filters()  # three known CPU-only log lines of torchao/bitsandbytes, nothing else

__version__ = "0.1.0"

KEY_PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "evaluate",
    "sentence-transformers", "gguf", "ipywidgets", "bertviz", "jupyterlab", "nbmake",
)


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" when absent)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def start_notebook(profile: str | None = None, seed: int = 0, verbose: bool = True) -> Profile:
    """The first call of every notebook: resolve the profile, seed, print what a screenshot needs.

    Returns the active :class:`~course_utils.profiles.Profile`.
    """
    import platform

    from .device import choose_precision, describe_device, get_device, seed_everything

    prof = get_profile(profile)
    seed_everything(seed)
    if verbose:
        versions = package_versions(("torch", "transformers", "datasets", "accelerate", "tokenizers"))
        print(f"course_utils {__version__} | python {platform.python_version()} | "
              + " | ".join(f"{k} {v}" for k, v in versions.items()))
        device = get_device()
        print(f"device: {describe_device(device)} | profile: {prof.name} | seed: {seed}")
        # e.g. "bf16 autocast (avx512_bf16, probe 1.40× fp32 at width 256)": what Trainer's "auto"
        # uses for a model of that width (it probes each model's own width)
        print(f"precision: {choose_precision(device)}")
    return prof


__all__ = ["Profile", "get_profile", "start_notebook", "package_versions", "__version__"]
