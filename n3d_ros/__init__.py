"""n3d_ros: a native-3D spatial vision-language model for ROS 2.

Layers (one direction of flow): core -> geometry -> vlm -> pipeline -> ros.
`sim` and `tools` sit beside them.
"""
# The generated ROS interfaces (n3d_ros.msg / n3d_ros.srv) may be installed in a different
# site-packages directory than this source tree (pip route); merge both portions of the package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
