"""What the sink reads out of servers' answers and out of refused lines."""
from __future__ import annotations

import email.utils
import time

from gateway.sinks.influxdb import dropped_count, parse_retry_after, quoted_rejections, server_message
from gateway.sinks.line_protocol import count_fields, split_lines


def test_count_fields_handles_escapes_and_strings():
    assert count_fields(b"m,site=a v=1 10") == 1
    assert count_fields(b"m,site=a v=1,w=2i,x=true 10") == 3
    assert count_fields(b'm,site=a s="a, b=c d",v=1 10') == 2
    assert count_fields(b'm,site=a s="say \\"hi\\", x=1" 10') == 1
    assert count_fields(b"my\\ meas,tag\\ key=va\\,lue f\\=x=1,g=2") == 2
    assert count_fields(b"garbage") == 1  # refused lines always count


def test_split_lines_keeps_bytes_and_skips_blanks_and_comments():
    assert split_lines(b"a v=1 1\n\n# note\nb v=2 2\n") == [b"a v=1 1", b"b v=2 2"]


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0


def test_influxdb_error_bodies():
    v1 = ('{"error":"partial write: unable to parse \'bad line\': invalid field format\\n'
          'unable to parse \'m,d=c g=1 zz\': bad timestamp dropped=0"}')
    assert quoted_rejections(v1) == {b"bad line": "unable to parse: invalid field format",
                                     b"m,d=c g=1 zz": "unable to parse: bad timestamp"}
    conflict = ('{"error":"partial write: field type conflict: input field \\"f\\" on measurement \\"m\\" '
                'is type string, already exists as type float dropped=2"}')
    assert dropped_count(conflict) == 2
    assert server_message(conflict).startswith("partial write: field type conflict")
    assert quoted_rejections(conflict) == {}
    assert dropped_count('{"error":"field type conflict"}') is None
    v3 = '{"error":"parsing failed","data":[{"original_line":"x y","line_number":2,"error_message":"bad"}]}'
    assert quoted_rejections(v3) == {b"x y": "bad"}
    assert server_message('{"code":"invalid","message":"no"}') == "no"
    assert server_message("plain text\n") == "plain text"
