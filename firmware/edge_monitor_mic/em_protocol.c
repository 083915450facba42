/*
 * em_protocol.c - framing, CRC and command handling for the edge-monitor
 * microphone firmware. Plain C99: no AVR headers, no dynamic memory.
 */
#include "em_protocol.h"

#include <string.h>

uint16_t em_crc16_update(uint16_t crc, uint8_t byte)
{
    uint8_t bit;
    crc ^= (uint16_t)((uint16_t)byte << 8);
    for (bit = 0; bit < 8; bit++) {
        crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t em_crc16(uint16_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        crc = em_crc16_update(crc, data[i]);
    }
    return crc;
}

static void put_u16le(uint8_t *out, uint16_t value)
{
    out[0] = (uint8_t)(value & 0xFFu);
    out[1] = (uint8_t)(value >> 8);
}

size_t em_encode_header(uint8_t *out, uint8_t kind, uint8_t flags, uint16_t seq,
                        uint16_t sample_rate_hz, uint16_t count)
{
    out[0] = EM_FRAME_MAGIC0;
    out[1] = EM_FRAME_MAGIC1;
    out[2] = EM_PROTOCOL_VERSION;
    out[3] = kind;
    out[4] = flags;
    put_u16le(out + 5, seq);
    put_u16le(out + 7, sample_rate_hz);
    put_u16le(out + 9, count);
    return EM_FRAME_HEADER_BYTES;
}

/* The CRC covers everything after the two magic bytes up to the end of the payload. */
static size_t finish_frame(uint8_t *out, size_t payload_len)
{
    size_t body = EM_FRAME_HEADER_BYTES + payload_len;
    uint16_t crc = em_crc16(EM_CRC16_INIT, out + 2, body - 2);
    put_u16le(out + body, crc);
    return body + EM_FRAME_CRC_BYTES;
}

size_t em_encode_audio_frame(uint8_t *out, size_t out_cap, uint8_t flags, uint16_t seq,
                             uint16_t sample_rate_hz, const uint16_t *samples, uint16_t count)
{
    size_t payload = 2u * (size_t)count;
    size_t i;
    if (count == 0 || count > EM_FRAME_MAX_SAMPLES ||
        out_cap < EM_FRAME_HEADER_BYTES + payload + EM_FRAME_CRC_BYTES) {
        return 0;
    }
    em_encode_header(out, EM_KIND_AUDIO, flags, seq, sample_rate_hz, count);
    for (i = 0; i < count; i++) {
        put_u16le(out + EM_FRAME_HEADER_BYTES + 2u * i, samples[i]);
    }
    return finish_frame(out, payload);
}

size_t em_encode_reply_frame(uint8_t *out, size_t out_cap, uint8_t flags, uint16_t seq,
                             uint16_t sample_rate_hz, const uint8_t *payload, uint16_t len)
{
    if (len > EM_FRAME_MAX_REPLY_BYTES ||
        out_cap < EM_FRAME_HEADER_BYTES + (size_t)len + EM_FRAME_CRC_BYTES) {
        return 0;
    }
    em_encode_header(out, EM_KIND_REPLY, flags, seq, sample_rate_hz, len);
    if (len > 0) {
        memcpy(out + EM_FRAME_HEADER_BYTES, payload, len);
    }
    return finish_frame(out, len);
}

size_t em_encode_command(uint8_t *out, size_t out_cap, uint8_t cmd, const uint8_t *args,
                         uint8_t arg_len)
{
    size_t body = EM_CMD_HEADER_BYTES + (size_t)arg_len;
    uint16_t crc;
    if (arg_len > EM_CMD_MAX_ARG_BYTES || out_cap < body + EM_FRAME_CRC_BYTES) {
        return 0;
    }
    out[0] = EM_CMD_MAGIC0;
    out[1] = EM_CMD_MAGIC1;
    out[2] = EM_PROTOCOL_VERSION;
    out[3] = cmd;
    out[4] = arg_len;
    if (arg_len > 0) {
        memcpy(out + EM_CMD_HEADER_BYTES, args, arg_len);
    }
    crc = em_crc16(EM_CRC16_INIT, out + 2, body - 2);
    put_u16le(out + body, crc);
    return body + EM_FRAME_CRC_BYTES;
}

void em_cmd_decoder_init(em_cmd_decoder_t *dec)
{
    memset(dec, 0, sizeof(*dec));
}

static void count_skipped(em_cmd_decoder_t *dec, size_t n)
{
    uint32_t total = (uint32_t)dec->bytes_skipped + (uint32_t)n;
    dec->bytes_skipped = total > 0xFFFFu ? 0xFFFFu : (uint16_t)total;
}

/*
 * The decoder keeps a sliding window of the last EM_CMD_MAX_FRAME_BYTES bytes.
 * A command is accepted the moment its last byte arrives, whatever garbage
 * precedes it: every start position whose header claims a frame ending exactly
 * at the newest byte is CRC-checked. No real command is ever held back by a
 * broken header that claims more bytes than it has.
 */
int em_cmd_decoder_feed(em_cmd_decoder_t *dec, uint8_t byte, em_command_t *out)
{
    uint8_t start;
    if (dec->len >= EM_CMD_MAX_FRAME_BYTES) {
        memmove(dec->buf, dec->buf + 1, EM_CMD_MAX_FRAME_BYTES - 1u);
        dec->len = EM_CMD_MAX_FRAME_BYTES - 1u;
        count_skipped(dec, 1);
    }
    dec->buf[dec->len++] = byte;

    for (start = 0; (uint8_t)(start + EM_CMD_HEADER_BYTES + EM_FRAME_CRC_BYTES) <= dec->len; start++) {
        const uint8_t *f = dec->buf + start;
        uint8_t arg_len = f[4];
        size_t body;
        uint16_t crc;
        if (f[0] != EM_CMD_MAGIC0 || f[1] != EM_CMD_MAGIC1 || f[2] != EM_PROTOCOL_VERSION ||
            arg_len > EM_CMD_MAX_ARG_BYTES) {
            continue;
        }
        body = EM_CMD_HEADER_BYTES + (size_t)arg_len;
        if ((size_t)start + body + EM_FRAME_CRC_BYTES != dec->len) {
            continue;
        }
        crc = em_crc16(EM_CRC16_INIT, f + 2, body - 2);
        if (f[body] != (uint8_t)(crc & 0xFFu) || f[body + 1] != (uint8_t)(crc >> 8)) {
            if (dec->crc_errors < 0xFFFFu) {
                dec->crc_errors++;
            }
            continue;
        }
        out->cmd = f[3];
        out->arg_len = arg_len;
        memset(out->args, 0, sizeof(out->args));
        if (arg_len > 0) {
            memcpy(out->args, f + EM_CMD_HEADER_BYTES, arg_len);
        }
        count_skipped(dec, start);
        dec->len = 0;
        return 1;
    }
    return 0;
}

static size_t put_status(uint8_t *reply, size_t reply_cap, uint8_t cmd, uint8_t status)
{
    if (reply_cap < 2) {
        return 0;
    }
    reply[0] = cmd;
    reply[1] = status;
    return 2;
}

size_t em_handle_command(const em_command_t *cmd, em_device_state_t *state,
                         const char *board_id, uint8_t *reply, size_t reply_cap)
{
    switch (cmd->cmd) {
    case EM_CMD_PING: {
        size_t n = put_status(reply, reply_cap, cmd->cmd, EM_STATUS_OK);
        size_t id_len = strlen(board_id);
        if (n == 0 || reply_cap < n + 4u) {
            return n;
        }
        reply[n++] = EM_PROTOCOL_VERSION;
        reply[n++] = EM_FIRMWARE_VERSION_MAJOR;
        reply[n++] = EM_FIRMWARE_VERSION_MINOR;
        reply[n++] = EM_FIRMWARE_VERSION_PATCH;
        if (id_len > reply_cap - n) {
            id_len = reply_cap - n;
        }
        memcpy(reply + n, board_id, id_len);
        return n + id_len;
    }
    case EM_CMD_SET_ALARM:
        if (cmd->arg_len != 1 || cmd->args[0] > 1) {
            return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_BAD_ARG);
        }
        state->alarm_on = cmd->args[0];
        return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_OK);
    case EM_CMD_SET_RATE: {
        uint16_t rate_hz;
        if (cmd->arg_len != 2) {
            return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_BAD_ARG);
        }
        rate_hz = (uint16_t)(cmd->args[0] | ((uint16_t)cmd->args[1] << 8));
        if (rate_hz != 8000u && rate_hz != 16000u) {
            return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_BAD_ARG);
        }
        if (rate_hz != state->sample_rate_hz) {
            state->sample_rate_hz = rate_hz;
            state->restart_sampler = state->streaming;
        }
        return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_OK);
    }
    case EM_CMD_START:
        if (cmd->arg_len != 0) {
            return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_BAD_ARG);
        }
        if (!state->streaming) {
            state->streaming = 1;
            state->restart_sampler = 1;
        }
        return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_OK);
    case EM_CMD_STOP:
        if (cmd->arg_len != 0) {
            return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_BAD_ARG);
        }
        state->streaming = 0;
        state->restart_sampler = 0;
        return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_OK);
    default:
        return put_status(reply, reply_cap, cmd->cmd, EM_STATUS_UNKNOWN_CMD);
    }
}
