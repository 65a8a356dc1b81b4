"""GliomaCompare backend: pure Python, no slicer / qt / vtk imports anywhere in this package.

Compares 3D CNNs with vision-language models at grading (LGG vs HGG) and localising gliomas
on BraTS MRI, following Liu, Yoo and Khalvati (arXiv 2509.10683).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
