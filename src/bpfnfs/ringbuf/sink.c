// SPDX-License-Identifier: Apache-2.0
/*
 * Batch sink for libbpf's ring_buffer__consume(): copies each record into one
 * of a few flat buffers by its header's (kind, version) (struct rec_hdr in
 * bpf/bpfnfs.h), so Python decodes a whole batch with one struct.iter_unpack
 * instead of running a callback per record.
 *
 * libbpf has already advanced the consumer position when it calls us, so a
 * record handed to us must be kept. We stop the drain (negative return) when
 * a buffer could not take one more record of its size; Python empties the
 * buffers and calls consume again. A record of a kind or version no buffer
 * takes, or whose size is not its layout's, is counted and dropped.
 */
/* No libc headers: only the compiler is needed to build this. */
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __UINT32_TYPE__ uint32_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __SIZE_TYPE__ size_t;

#define SINK_MAX 4

struct rec_hdr {
	uint16_t kind;
	uint16_t version;
	uint32_t size;
};

struct sink_buf {
	uint8_t *data;
	uint64_t cap;      /* bytes */
	uint64_t len;      /* bytes used */
	uint64_t rec_size; /* every record in this buffer has this size */
	uint64_t kind;     /* and this header: kind | version << 16 */
};

struct sink {
	struct sink_buf bufs[SINK_MAX];
	uint64_t nbufs;
	uint64_t unknown;  /* records no buffer takes: counted, dropped */
};

int bpfnfs_sink_cb(void *ctx, void *data, size_t size)
{
	struct sink *s = ctx;
	struct rec_hdr h;
	uint64_t i, n = s->nbufs < SINK_MAX ? s->nbufs : SINK_MAX;
	int full = 0;

	if (size < sizeof(h)) {
		s->unknown++;
		return 0;
	}
	__builtin_memcpy(&h, data, sizeof(h));
	for (i = 0; i < n; i++) {
		struct sink_buf *b = &s->bufs[i];

		if (b->kind != (h.kind | (uint64_t)h.version << 16))
			continue;
		if (b->rec_size != size || h.size != size)
			i = n; /* a known kind with another size: not this layout */
		else {
			__builtin_memcpy(b->data + b->len, data, size);
			b->len += size;
		}
		break;
	}
	if (i == n)
		s->unknown++;
	for (i = 0; i < n; i++)
		if (s->bufs[i].cap - s->bufs[i].len < s->bufs[i].rec_size)
			full = 1;
	return full ? -28 /* ENOSPC: stop here, nothing lost */ : 0;
}
