"""Which model files Berth loads, decided before any of their code could run.

Whoever can write the models volume can replace a bundle's model file and the sha256 its
metadata.json records, together. So trust never comes from the volume, only from the operator's
settings:

- a skops file (`model.skops`) is loaded with an explicit list of the types it may construct:
  skops' own defaults, the classes of scikit-learn, numpy and scipy, and TRUSTED_TYPES. Any other
  type refuses the file before anything in it is imported or constructed;
- a pickle (`model.joblib`) runs whatever code it names while it is read, so it is read only when
  PICKLE_SHA256 pins this very file's hash, or when ALLOW_PICKLE opts in to every pickle.

The bytes are hashed, checked and loaded from one read, so a file swapped in between a check and
the load is never the one loaded.
"""

from __future__ import annotations

import importlib
import io
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import joblib
import skops.io

from berth_common.settings import ApiSettings

ModelFormat = Literal["skops", "joblib"]
MODEL_FILES: dict[ModelFormat, str] = {"skops": "model.skops", "joblib": "model.joblib"}
# Importing an installed module of these packages runs only their own definitions, and their
# classes are what fitted models are made of. Their functions are not trusted: a function named
# in a model file is called with whatever arguments the file chooses.
LIBRARY_PACKAGES = frozenset({"sklearn", "numpy", "scipy"})
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")

logger = logging.getLogger(__name__)


class UntrustedModel(Exception):
    """A model file the operator's policy does not allow to load; the message says what to do."""


@dataclass(frozen=True)
class TrustPolicy:
    """What the operator trusts beyond the defaults; built from settings, never from a bundle.

    The default instance is the safe policy: no extra skops types, no pickles.
    """

    trusted_types: frozenset[str] = frozenset()
    allow_pickle: bool = False
    # "name/version" -> the sha256 that bundle's pickle must have
    pickle_pins: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> TrustPolicy:
        return cls(
            trusted_types=settings.trusted_type_names,
            allow_pickle=settings.allow_pickle,
            pickle_pins=settings.pickle_pins,
        )


SAFE_POLICY = TrustPolicy()


def load_model_bytes(
    data: bytes, model_format: ModelFormat, *, key: str, sha256: str, policy: TrustPolicy
) -> Any:
    """The model in `data` (the file of bundle `key`, whose hash is `sha256`), if the policy
    allows it; UntrustedModel before anything is imported or unpickled otherwise."""
    if model_format == "skops":
        return _load_skops(data, policy)
    _check_pickle(key, sha256, policy)
    return joblib.load(io.BytesIO(data))


def untrusted_types(names: Iterable[str], policy: TrustPolicy) -> list[str]:
    """The type names, of those a skops file needs, that neither Berth nor the operator trusts."""
    return sorted(
        name for name in names if name not in policy.trusted_types and not is_library_class(name)
    )


def is_library_class(name: str) -> bool:
    """Whether `name` is a class of scikit-learn, numpy or scipy: its module is in one of those
    packages, and what the name resolves to there is a class defined in one of them."""
    module_name, _, attribute = name.rpartition(".")
    parts = module_name.split(".")
    if parts[0] not in LIBRARY_PACKAGES or not _IDENTIFIER.fullmatch(attribute):
        return False
    # `__main__` modules run a program when imported, conftest modules configure pytest
    if any(not _IDENTIFIER.fullmatch(p) or p.startswith("__") or p == "conftest" for p in parts):
        return False
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except Exception:  # a module that does not import, for whatever reason, vouches for nothing
        return False
    # a name re-exported from elsewhere (`from subprocess import Popen`) is not the library's
    home = getattr(found, "__module__", None) or ""
    return isinstance(found, type) and home.split(".")[0] in LIBRARY_PACKAGES


def _load_skops(data: bytes, policy: TrustPolicy) -> Any:
    try:
        needed = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # a malformed archive raises whatever zipfile or json raise
        raise UntrustedModel(f"{MODEL_FILES['skops']} is not a skops file: {exc!r}") from exc
    refused = untrusted_types(needed, policy)
    if refused:
        raise UntrustedModel(
            f"{MODEL_FILES['skops']} needs types Berth does not trust: "
            f"{', '.join(refused)}. Loading them could run their code; if you trust them, add "
            "them to TRUSTED_TYPES (comma-separated full names) and restart the api"
        )
    # exactly the types just checked: nothing the file adds later can slip through
    return skops.io.loads(data, trusted=needed)


def _check_pickle(key: str, sha256: str, policy: TrustPolicy) -> None:
    file = MODEL_FILES["joblib"]
    pinned = policy.pickle_pins.get(key)
    if pinned is not None:
        if pinned != sha256:
            raise UntrustedModel(
                f"sha256 of {file} is {sha256}, but PICKLE_SHA256 pins {key} to {pinned}; "
                "refusing a pickle that is not the one pinned (it would run code as it loads)"
            )
        logger.info("%s: loading %s, a pickle pinned by PICKLE_SHA256", key, file)
        return
    name, _, version = key.partition("/")
    if not policy.allow_pickle:
        raise UntrustedModel(
            f"{file} is a pickle, and pickles are refused: loading one runs any code it "
            f"holds. Repackage it in the safe skops format (make repackage NAME={name} "
            f"VERSION={version}); or, if this is the file you packaged, pin its hash with "
            f"PICKLE_SHA256={key}={sha256}; or set ALLOW_PICKLE=true to load every pickle bundle"
        )
    logger.warning(
        "%s: loading %s, a pickle, because ALLOW_PICKLE is set: whoever can write the models "
        "volume can run code in the api. Repackage it: make repackage NAME=%s VERSION=%s",
        key,
        file,
        name,
        version,
    )
