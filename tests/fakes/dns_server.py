"""A tiny authoritative DNS server over UDP on 127.0.0.1 (dnspython for the wire format).

Answers A and AAAA from ``records`` (name -> IPs, changeable while it runs), NXDOMAIN for any
other name, and SERVFAIL for every query while ``failing`` is set. Real UDP and real DNS
messages: what DNSDiscovery's ``server`` path talks to in a cluster.
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DNSServer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.failing = False
        self.queries = 0
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        if self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            version = 4 if question.rdtype == dns.rdatatype.A else 6
            ips = [ip for ip in self.records[name] if ipaddress.ip_address(ip).version == version]
            if ips:
                response.answer.append(
                    dns.rrset.from_text_list(
                        question.name, 5, dns.rdataclass.IN, question.rdtype, ips
                    )
                )
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)
