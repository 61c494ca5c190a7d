"""The skill profiler and the profiles it writes."""

from .profile import PROFILE_VERSION, Profile
from .profiler import build_profile

__all__ = ["PROFILE_VERSION", "Profile", "build_profile"]
