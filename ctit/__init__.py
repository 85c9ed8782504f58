"""ctit: hetrombopag response prediction in cancer-therapy-induced thrombocytopenia."""

__version__ = "0.1.0"
