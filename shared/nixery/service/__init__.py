"""What the registry does with images, whatever serves it: find or build an image
(``images``), show builds (``catalog``), collect what is no longer used (``gc``)."""
