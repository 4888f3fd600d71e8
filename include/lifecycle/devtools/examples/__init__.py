"""Example pipelines on real public data sets (bundled in packages: nothing is downloaded at run time)."""
