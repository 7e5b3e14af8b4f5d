"""Running Nix and reading what it says: store paths, closures, the store's upkeep and
popularity. Part of building: the registry never imports it."""
