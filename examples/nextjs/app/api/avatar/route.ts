// GET /api/avatar?seed=alice&size=small|large&transparent=true&bgColor=%23ffeecc&outputSize=256&format=png
// A PNG (or WebP/JPEG) avatar from the @avatar/node addon, computed on libuv's thread pool.
import { AvatarGenerator } from '@avatar/node';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';

// Load each model once per server process; every request shares it.
const generators = new Map<string, AvatarGenerator>();
function generatorFor(size: string): AvatarGenerator {
  let generator = generators.get(size);
  if (!generator) {
    generator = new AvatarGenerator({ size, device: 'cpu' });
    generators.set(size, generator);
  }
  return generator;
}

const MIME: Record<string, string> = { png: 'image/png', webp: 'image/webp', jpeg: 'image/jpeg', jpg: 'image/jpeg' };

export async function GET(request: Request): Promise<Response> {
  const query = new URL(request.url).searchParams;
  const format = query.get('format') ?? 'png';
  const seed = query.get('seed') ?? undefined;
  const outputSize = query.get('outputSize');
  try {
    const generator = generatorFor(query.get('size') ?? 'small');
    const image = await generator.generate(
      {
        seed,
        transparent: query.get('transparent') === 'true',
        bgColor: query.get('bgColor') ?? undefined,
        outputSize: outputSize ? Number(outputSize) : undefined,
        format,
      },
      request.signal,
    );
    return new Response(new Uint8Array(image), {
      headers: {
        'content-type': MIME[format] ?? 'application/octet-stream',
        // A seeded avatar never changes; a random one must not be cached.
        'cache-control': seed ? 'public, max-age=31536000, immutable' : 'no-store',
      },
    });
  } catch (error) {
    const e = error as Error & { code?: string; field?: string };
    const status = e.code === 'ERR_INVALID_OPTION' ? 422 : e.code === 'ERR_CANCELLED' ? 499 : 500;
    return Response.json({ error: e.message, code: e.code, field: e.field }, { status });
  }
}
