"""Attaches a file to an image in a registry as a referrer, with oras-py.

usage: registry_oras.py REGISTRY REPO TOKEN SUBJECT_DIGEST SUBJECT_SIZE FILE ARTIFACT_TYPE
Prints the digest of the manifest it pushed.
"""

import os
import sys

import oras.client
import oras.oci

registry, repo, token, digest, size, path, artifact_type = sys.argv[1:]
client = oras.client.OrasClient(insecure=True, auth_backend="basic")
client.auth.set_basic_auth("kelp", token)
subject = oras.oci.Subject(
    mediaType="application/vnd.oci.image.manifest.v1+json",
    digest=digest,
    size=int(size),
)
os.chdir(os.path.dirname(path))
# oras-py writes no `artifactType`; the type is its config's media type, as
# the image spec reads a manifest without one.
with open("config.json", "w") as f:
    f.write("{}")
response = client.push(
    manifest_config=f"config.json:{artifact_type}",
    target=f"{registry}/{repo}:attached",
    files=[f"{os.path.basename(path)}:{artifact_type}"],
    subject=subject,
    manifest_annotations={"org.example.attached-by": "oras-py"},
    quiet=True,
)
print(response.status_code, response.headers.get("OCI-Subject", ""), response.headers.get("Docker-Content-Digest", ""))
