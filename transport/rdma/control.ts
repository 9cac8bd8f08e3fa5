/**
 * The RDMA control plane carried by the TCP peer protocol: an `rdma://` client
 * opens the same authenticated connection a `tcp://` client would (HMAC
 * challenge-response, one session namespace), then exchanges its queue-pair
 * handshake and slab grants as `RDMA` frames on it. The peer daemon hands such
 * a connection to its {@linkcode RdmaPeerService}; pages never cross it.
 *
 * @module
 */

import { PeerConnection } from "../tcp/connection.ts";
import { parsePeerUrl } from "../tcp.ts";
import { type RdmaControlChannel, tunnelChannel } from "./handshake.ts";

/**
 * Returns the `connectControl` an RDMA store needs: for `rdma://H:P`, an
 * authenticated connection to the peer daemon at `tcp://H:P` wrapped as an
 * {@linkcode RdmaControlChannel}. A lost connection ends the channel
 * (`receive()` resolves to null), which the store treats as a failed peer.
 *
 * @example
 * ```ts
 * const connect = controlConnector(token, "remora:host:42:beef");
 * const channel = await connect("rdma://10.0.0.2:7070");
 * await channel.send({ type: "slab-request", count: 1 });
 * ```
 */
export function controlConnector(
  token: Uint8Array | null,
  namespace: string,
): (url: string) => Promise<RdmaControlChannel> {
  return async (url) => {
    const target = parsePeerUrl(url.replace(/^rdma:\/\//, "tcp://"));
    // Its own session name: the peer keeps TCP slabs and RDMA slabs apart.
    const conn = await PeerConnection.open(target, token, `${namespace}:rdma`);
    const tunnel = tunnelChannel(
      (payload) => conn.sendRdma(payload),
      () => void conn.close(),
    );
    conn.onRdma = (payload) => tunnel.deliver(payload);
    conn.onLost = () => tunnel.deliver(null);
    return tunnel.channel;
  };
}
