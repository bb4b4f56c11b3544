"""blockgate: ISP-side DNS and TLS-SNI enforcement of regulator blocklists."""

__version__ = "0.1.0"
