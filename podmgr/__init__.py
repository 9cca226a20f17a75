"""podmgr: App Container pods as transient systemd units."""

__version__ = "0.1.0"
#: The App Container specification version podmgr implements.
APPC_SPEC_VERSION = "0.8.11"
