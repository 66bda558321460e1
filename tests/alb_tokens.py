"""``x-amzn-oidc-data`` tokens shaped as an Application Load Balancer sends them, signed
with a key of the test's own, and a stand-in for ALB's regional public-key endpoint.

The header and payload are AWS's documentation example (tests/fixtures/alb/), with only
the placeholders a real token fills replaced as text: ``alg`` (``ES256``), ``signer`` (the
load balancer's ARN) and ``exp`` (epoch seconds). Like ALB, every segment is base64url
*with* its ``=`` padding, and the signature is over the padded header and payload.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.harness import FakeAPI, fixture_bytes

# the example load balancer ARN of the status page's configuration sample
ARN = ("arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/receiver/"
       "50dc6c495c0c9188")
OTHER_ARN = ("arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/other/"
             "0123456789abcdef")
KID = "12345678-1234-1234-1234-123456789012"  # the documentation example's key id
HEADER = fixture_bytes("alb/aws-docs-oidc-data-header.json")
PAYLOAD = fixture_bytes("alb/aws-docs-oidc-data-payload.json")
EMAIL = json.loads(PAYLOAD)["email"]


def b64(raw: bytes, padded: bool = True) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public half, as the key endpoint serves it (PEM)."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Signer:
    """An ALB stand-in: its key pair and the tokens it would send."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def token(self, *, alg: str = "ES256", signer: str = ARN, kid: str = KID,
              exp: float | None = None, padded: bool = True,
              key: ec.EllipticCurvePrivateKey | None = None) -> str:
        """A token as ALB sends it; each argument changes one thing."""
        exp = time.time() + 120 if exp is None else exp
        header = (HEADER.replace(b'"algorithm"', json.dumps(alg).encode())
                  .replace(b'"arn:aws:elasticloadbalancing:region-code:account-id:loadbalancer/'
                           b'app/load-balancer-name/load-balancer-id"', json.dumps(signer).encode())
                  .replace(b'"expiration"', str(int(exp)).encode())
                  .replace(json.dumps(KID).encode(), json.dumps(kid).encode()))
        signing_input = f"{b64(header, padded)}.{b64(PAYLOAD, padded)}"
        der = (key or self.key).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'), padded)}"


def key_endpoint(signer: Signer, region: str = "us-east-1") -> FakeAPI:
    """The regional public-key endpoint's stand-in: ``/{region}/{kid}`` answers the PEM of
    ``signer``'s key for KID, and 404 for any other key id."""
    api = FakeAPI()
    api.routes[f"/{region}/{KID}"] = lambda _rec: (200, pem(signer.key), {})
    return api
