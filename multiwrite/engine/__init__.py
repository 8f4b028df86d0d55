"""The MultiWrite engine: how a payload reaches a set of destination ranks (docs/design.md, "Layers")."""
