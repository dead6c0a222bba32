"""The domain model: configured objects, their validation and the YAML loader. No I/O but
``loader.load_file``."""

from zerogate.model.loader import ConfigError, Loaded, Problem, load_file, load_text, validate_data
from zerogate.model.objects import (
    Application,
    ConfigFile,
    Group,
    IdentityProvider,
    Objects,
    OidcProvider,
    OneTimePinProvider,
    Policy,
    Rule,
    RuleSet,
    ServiceToken,
    Settings,
    Tunnel,
)

__all__ = [
    "Application",
    "ConfigError",
    "ConfigFile",
    "Group",
    "IdentityProvider",
    "Loaded",
    "Objects",
    "OidcProvider",
    "OneTimePinProvider",
    "Policy",
    "Problem",
    "Rule",
    "RuleSet",
    "ServiceToken",
    "Settings",
    "Tunnel",
    "load_file",
    "load_text",
    "validate_data",
]
