// systemd's readiness protocol (sd_notify(3)) for `Type=notify` units: one
// datagram per message to $NOTIFY_SOCKET, sent by our syscall addon (Node has
// no unix datagram sockets; `systemd-notify` from a child would name the
// wrong pid unless NotifyAccess=all). Without NOTIFY_SOCKET nothing is sent.
import { log } from '../log'
import { sys } from '../native/sys'

let warned = false

/** Sends `message` (e.g. "READY=1\nSTATUS=…") when run by systemd; whether it was sent. */
export function sdNotify(message: string): boolean {
  const socket = process.env.NOTIFY_SOCKET
  if (!socket) return false
  const r = sys().sdNotify(socket, message)
  if (r < 0 && !warned) {
    warned = true
    log.warn(`NOTIFY_SOCKET ${socket}: sending to systemd failed (errno ${-r}); the unit may time out waiting for READY=1`)
  }
  return r === 0
}
