"""FUSE daemon, launcher, sandbox and command-line front ends of pyfsmount."""
