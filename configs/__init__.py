"""The Hydra config tree (YAML files only): a package so that an installed steelseg ships it as package data."""
