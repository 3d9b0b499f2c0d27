"""A Mercurial extension that the worker loads into every hg it runs: an HTTP
redirect is followed only to the host that was asked, never to another host
and never from https down to http.

hg itself follows any redirect and only warns ("real URL is ..."), so a
misconfigured or compromised hg host could send the worker's clones to a
host nobody configured. Loaded by path with `--config extensions.<name>=`;
Clones.run does that.
"""

import urllib.request
from urllib.parse import urlsplit

from mercurial import error, url

testedwith = b"7.2"

REFUSAL = b"redirects to another host"


class SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, refusing redirects that leave the host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        asked, told = urlsplit(req.full_url), urlsplit(newurl)
        downgrade = asked.scheme == "https" and told.scheme != "https"
        if told.netloc != asked.netloc or downgrade:
            raise error.Abort(b"%s %s (%s)" % (req.full_url.encode("utf-8", "replace"),
                                               REFUSAL, newurl.encode("utf-8", "replace")))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def uisetup(ui):
    url.handlerfuncs.append(lambda ui, passwords: SameHostRedirects())
