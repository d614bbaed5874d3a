"""kubelite's default images (busybox, httpd) and image archive loading.

build.py builds the default images from Debian's busybox-static and pushes
them (`python -m deploy.images.build --registry HOST:PORT`); oci.py has the
reproducible OCI building blocks; load.py backs `kctl image load` and
`kctl image ls`.
"""
