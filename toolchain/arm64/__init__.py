"""The arm64 root the check builds, the jail commands run in, and the instruction count of a bundle's pipelines under qemu."""
