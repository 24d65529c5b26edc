"""Language profiles: script ranges, normalisation, counting units and sentence splitting."""

from langadapt.lang.profiles import PROFILES, LanguageProfile, get_profile

__all__ = ["LanguageProfile", "get_profile", "PROFILES"]
