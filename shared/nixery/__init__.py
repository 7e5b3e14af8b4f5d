"""A container registry that builds images on demand with Nix, from the image name alone."""
