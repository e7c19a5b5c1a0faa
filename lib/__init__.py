"""CmFNet Label: the library behind the MONAI Label app in apps/cmfnet."""
