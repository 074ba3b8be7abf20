"""Recipes that put slime_core's ops into other libraries' models (imported explicitly, e.g.
`from slime_core.integrations.hf import SlimeLlavaNext`); none imports those libraries."""
