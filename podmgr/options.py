"""The closed sets of pod options, spelled as on the CLI, and an app's bind mounts.

Apart from :mod:`podmgr.names`: creating these classes costs 1.5 ms, which a ``podmgr
run`` of a command line seen before (:mod:`podmgr.fastpath`) does without.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class NetMode(enum.StrEnum):
    HOST = "host"
    #: The pod's own network namespace with only ``lo``.
    NONE = "none"
    #: The pod's own network namespace with CNI networks (``PodRecord.networks``).
    CNI = "cni"


class ExitPolicy(enum.StrEnum):
    ON_ANY_FAILURE = "on-any-failure"
    ON_ANY = "on-any"
    UNTIL_ALL = "until-all"


class RestartPolicy(enum.StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


# A NamedTuple, not a dataclass: dataclasses (with inspect) costs a start-up 5-7 ms.
class Bind(NamedTuple):
    """A host path bind-mounted into an app's root."""

    source: str
    target: str
    read_only: bool = False
    recursive: bool = True
