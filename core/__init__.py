"""Ground layer: the one config object, the data model, the stage-1 feature tables, the process environment.

Imports nothing from the other project packages."""
