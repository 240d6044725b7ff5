"""pip / editable install of the Python package n3d_ros (the pip-wheel route; see docs/setup.md).

The ROS build (CMakeLists.txt) installs the same package and reads CONSOLE_SCRIPTS below to make the
`ros2 run n3d_ros <name>` executables, so each entry must stay on one line as "name = module:function".
torch is deliberately not a requirement: it is installed first, pinned, by scripts/setup_env.sh
(requirements-torch.txt), so pip never swaps in another build of it.
"""
from setuptools import find_packages, setup

CONSOLE_SCRIPTS = [
    "spatial_query_node = n3d_ros.ros.spatial_query_node:main",
    "sim_camera_node = n3d_ros.ros.sim_camera_node:main",
    "n3d-query = n3d_ros.ros.query_client:main",
    "n3d-build-engine = n3d_ros.geometry.build_engine:main",
    "n3d-bench = n3d_ros.tools.bench:main",
    "n3d-demo = n3d_ros.tools.demo:main",
    "n3d-train-compact = n3d_ros.tools.train_compact:main",
    "n3d-record-bag = n3d_ros.tools.record_bag:main",
    "n3d-bag-player = n3d_ros.ros.bag_player:main",
]

setup(
    name="n3d_ros",
    version="0.1.0",
    description="Native-3D spatial vision-language model for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The repo root is the package root: an editable install then adds the repo root to sys.path (a plain .pth)
    # instead of an import hook, so n3d_ros/__init__.py's pkgutil.extend_path also finds the generated
    # msg/srv portion in site-packages.
    package_dir={"": "."},
    packages=find_packages(where=".", include=["n3d_ros", "n3d_ros.*"]),
    install_requires=["numpy", "scipy", "pyyaml", "pillow", "safetensors"],
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    zip_safe=False,
)
