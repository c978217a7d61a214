/*
 * floor.c: the floor server of scripts/bench-fleet: plain libuv that
 * answers every read with one canned WebSocket frame (MASTER's heartbeat
 * ack), with no parsing and no state beyond the socket. What it costs per
 * heartbeat and per connection is the floor MASTER is compared with.
 * Prints "port N" once listening on 127.0.0.1 (port 0 = any free).
 *   floor [PORT]
 * Depends on libuv only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static const char reply[] = "\x81\x13{\"o\":1,\"d\":{\"o\":9}}";
static char shared[65536]; /* reads are consumed at once */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(shared, sizeof shared);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  if (nread == 0) return;
  if (nread < 0) {
    uv_close((uv_handle_t *)s, (uv_close_cb)free);
    return;
  }
  uv_buf_t b = uv_buf_init((char *)reply, sizeof reply - 1);
  if (uv_try_write(s, &b, 1) != (int)(sizeof reply - 1)) /* loopback: never partial */
    uv_close((uv_handle_t *)s, (uv_close_cb)free);
}

static void connection_cb(uv_stream_t *server, int status) {
  if (status < 0) return;
  uv_tcp_t *c = malloc(sizeof *c);
  if (c == NULL) return;
  uv_tcp_init(server->loop, c);
  if (uv_accept(server, (uv_stream_t *)c) != 0) {
    uv_close((uv_handle_t *)c, (uv_close_cb)free);
    return;
  }
  uv_tcp_nodelay(c, 1);
  uv_read_start((uv_stream_t *)c, alloc_cb, read_cb);
}

int main(int argc, char **argv) {
  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t server;
  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_ip4_addr("127.0.0.1", argc > 1 ? atoi(argv[1]) : 0, &addr);
  uv_tcp_init(loop, &server);
  int r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&server, 1024, connection_cb);
  if (r != 0) {
    fprintf(stderr, "floor: %s\n", uv_strerror(r));
    return 1;
  }
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  printf("port %d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}
