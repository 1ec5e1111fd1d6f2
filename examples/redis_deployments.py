"""Redis as deployed in production: the URL for each shape, and the ACL user the store needs.

Run it to print the ``ACL SETUSER`` line for your store URL (nothing is
connected), then point ``CONNECTOR_STORE_URL`` at the same URL:

    python examples/redis_deployments.py 'redis+sentinel://s1:26379,s2:26379/mymaster/0?prefix=billing'
"""

from __future__ import annotations

import sys

from connector_resilience.backends.redis import acl_rules

URLS = {
    "one server or a managed primary": "redis://app:PASSWORD@redis.internal:6379/0?prefix=billing",
    "Sentinel": "redis+sentinel://app:PASSWORD@s1:26379,s2:26379,s3:26379/mymaster/0?prefix=billing",
    "Cluster": "redis+cluster://app:PASSWORD@n1:7000,n2:7000?prefix=billing",
}


def main() -> None:
    urls = {"yours": sys.argv[1]} if len(sys.argv) > 1 else URLS
    for shape, url in urls.items():
        print(f"# {shape}: CONNECTOR_STORE_URL='{url}'")
        print(f"ACL SETUSER app on >PASSWORD {acl_rules(url)}")


if __name__ == "__main__":
    main()
