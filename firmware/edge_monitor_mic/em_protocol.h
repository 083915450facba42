/*
 * em_protocol.h - edge-monitor serial protocol core (plain C, no AVR headers).
 *
 * Builds unchanged with avr-gcc (inside the sketch) and with the host's gcc
 * (unit tests and fuzz tests under firmware/tests/). The wire format is
 * described byte by byte in firmware/PROTOCOL.md.
 */
#ifndef EM_PROTOCOL_H
#define EM_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Device -> gateway frames ------------------------------------------ */

#define EM_PROTOCOL_VERSION 1u
#define EM_FRAME_MAGIC0 0xA5u
#define EM_FRAME_MAGIC1 0x5Au
#define EM_FRAME_HEADER_BYTES 11u /* magic(2) version kind flags seq(2) rate(2) count(2) */
#define EM_FRAME_CRC_BYTES 2u
#define EM_FRAME_MAX_SAMPLES 512u   /* audio frames: at most this many samples */
#define EM_FRAME_MAX_REPLY_BYTES 64u /* reply frames: at most this many payload bytes */

#define EM_KIND_AUDIO 1u
#define EM_KIND_REPLY 2u

#define EM_FLAG_STREAMING 0x01u /* the device is sampling and sending audio */
#define EM_FLAG_ALARM 0x02u     /* the alarm output is on */
#define EM_FLAG_BOOT 0x04u      /* first frame since the MCU was reset */
#define EM_FLAG_RESTART 0x08u   /* first audio frame of a new stream; seq restarts at 0 */
#define EM_FLAG_OVERRUN 0x10u   /* the device dropped >= 1 block just before this one */

#define EM_ADC_MAX_CODE 1023u /* 10-bit ADC */

/* ---- Gateway -> device commands ---------------------------------------- */

#define EM_CMD_MAGIC0 0xC3u
#define EM_CMD_MAGIC1 0x3Cu
#define EM_CMD_HEADER_BYTES 5u /* magic(2) version cmd length */
#define EM_CMD_MAX_ARG_BYTES 8u
#define EM_CMD_MAX_FRAME_BYTES (EM_CMD_HEADER_BYTES + EM_CMD_MAX_ARG_BYTES + EM_FRAME_CRC_BYTES)

#define EM_CMD_PING 0x01u      /* no args; reply carries firmware version and board id */
#define EM_CMD_SET_ALARM 0x02u /* 1 byte: 0 off, 1 on */
#define EM_CMD_SET_RATE 0x03u  /* 2 bytes LE: 8000 or 16000 (Hz) */
#define EM_CMD_START 0x04u     /* no args */
#define EM_CMD_STOP 0x05u      /* no args */

#define EM_STATUS_OK 0u
#define EM_STATUS_BAD_ARG 1u
#define EM_STATUS_UNKNOWN_CMD 2u

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor. */
#define EM_CRC16_INIT 0xFFFFu

/** Update a CRC-16/CCITT-FALSE with one byte. */
uint16_t em_crc16_update(uint16_t crc, uint8_t byte);

/** CRC-16/CCITT-FALSE of a buffer, continuing from crc (start with EM_CRC16_INIT). */
uint16_t em_crc16(uint16_t crc, const uint8_t *data, size_t len);

/** Write the 11-byte frame header into out; returns EM_FRAME_HEADER_BYTES. */
size_t em_encode_header(uint8_t *out, uint8_t kind, uint8_t flags, uint16_t seq,
                        uint16_t sample_rate_hz, uint16_t count);

/**
 * Encode a whole audio frame (header, samples as uint16 LE, CRC) into out.
 * Returns the frame length, or 0 if it does not fit in out_cap or count is
 * out of range.
 */
size_t em_encode_audio_frame(uint8_t *out, size_t out_cap, uint8_t flags, uint16_t seq,
                             uint16_t sample_rate_hz, const uint16_t *samples, uint16_t count);

/** Encode a reply frame (kind EM_KIND_REPLY); returns its length or 0 if it does not fit. */
size_t em_encode_reply_frame(uint8_t *out, size_t out_cap, uint8_t flags, uint16_t seq,
                             uint16_t sample_rate_hz, const uint8_t *payload, uint16_t len);

/** Encode a gateway->device command frame; returns its length or 0 if args are too long. */
size_t em_encode_command(uint8_t *out, size_t out_cap, uint8_t cmd, const uint8_t *args,
                         uint8_t arg_len);

/** A decoded gateway->device command. */
typedef struct {
    uint8_t cmd;
    uint8_t arg_len;
    uint8_t args[EM_CMD_MAX_ARG_BYTES];
} em_command_t;

/**
 * Incremental command decoder. Keeps at most one command frame of bytes, so it
 * fits the ATmega328P's RAM. After garbage or a CRC failure it rescans the
 * bytes it holds, so a real command that starts inside a broken one is found.
 */
typedef struct {
    uint8_t buf[EM_CMD_MAX_FRAME_BYTES];
    uint8_t len;
    uint16_t crc_errors;    /* frames with a valid header whose CRC did not match */
    uint16_t bytes_skipped; /* bytes discarded while looking for a frame (saturates) */
} em_cmd_decoder_t;

/** Reset a decoder to its empty state (counters cleared). */
void em_cmd_decoder_init(em_cmd_decoder_t *dec);

/**
 * Feed one byte. Returns 1 and fills *out when the byte completes a valid
 * command frame, else 0.
 */
int em_cmd_decoder_feed(em_cmd_decoder_t *dec, uint8_t byte, em_command_t *out);

/* ---- Device behaviour (pure: the sketch applies the resulting state) ----- */

#define EM_FIRMWARE_VERSION_MAJOR 1u
#define EM_FIRMWARE_VERSION_MINOR 0u
#define EM_FIRMWARE_VERSION_PATCH 0u

/** What the device should be doing; commands change it, the sketch applies it. */
typedef struct {
    uint8_t alarm_on;
    uint8_t streaming;
    uint16_t sample_rate_hz;
    uint8_t restart_sampler; /* set when sampling must (re)start: START or a rate change */
} em_device_state_t;

/**
 * Apply a command to the device state and write the reply payload
 * ([cmd, status, data...]) into reply (capacity reply_cap). board_id is a
 * short ASCII name included in the PING reply. Returns the payload length.
 */
size_t em_handle_command(const em_command_t *cmd, em_device_state_t *state,
                         const char *board_id, uint8_t *reply, size_t reply_cap);

#ifdef __cplusplus
}
#endif

#endif /* EM_PROTOCOL_H */
